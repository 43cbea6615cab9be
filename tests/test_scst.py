"""Self-critical training on CIDEr-D: the reward, the sampler, the policy gradient, and runs through ``train``."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from example_photos import CAPTIONS, NAMES, copy_photos, synthetic_captions  # noqa: E402
from resume_check import assert_same_training_state, train_one_epoch_then_stop  # noqa: E402
from tiny_bundle import TINY_TRAINING as TINY  # noqa: E402

from capcli.errors import FatalError  # noqa: E402
from capcli.text import Vocab, tokenize  # noqa: E402
from capcli.train import checkpoint, scst  # noqa: E402
from capcli.train.dev import search_spec  # noqa: E402
from capcli.train.loop import ARCHITECTURE, TrainOptions, train  # noqa: E402
from capcli.train.model import CaptionModel, ModelConfig  # noqa: E402
from capcli.train.reward import CiderD  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- the reward ---------------------------------------------------------------------------------


def test_cider_d_matches_pycocoevalcap_per_image() -> None:
    """Same images, same references: CiderD's document frequencies equal CiderScorer's, and so do the scores."""
    Cider = pytest.importorskip("pycocoevalcap.cider.cider").Cider
    captions = synthetic_captions(100)
    names = list(captions)
    refs = [[tokenize(c) for c in captions[name]] for name in names]
    n = len(refs)
    assert n == 100 and all(len(r) >= 2 for r in refs)
    hyps = []
    for i in range(n):
        other = refs[(i * 7 + 3) % n]  # another image's reference: partly overlapping words at best
        hyp = list(other[i % len(other)])
        if i % 10 == 1:  # repeated n-grams: the clipping min(hyp, ref) matters
            hyp = hyp + hyp[:3] + hyp[:3]
        elif i % 10 == 2:  # the image's own reference plus noise: a high score
            hyp = refs[i][0] + ["xylophone"]
        elif i % 10 == 3:  # one word: no bigrams, length 0
            hyp = hyp[:1]
        hyps.append(hyp)
    gts = {name: [" ".join(r) for r in image_refs] for name, image_refs in zip(names, refs)}
    res = {name: [" ".join(h)] for name, h in zip(names, hyps)}
    _, expected = Cider().compute_score(gts, res)

    reward = CiderD(refs, mark_end=False)
    got = reward.scores(list(range(n)), hyps)
    assert got.shape == (n,) and got.dtype == np.float32
    for i in range(n):
        assert abs(reward.score(i, hyps[i]) - expected[i]) < 1e-5, (i, hyps[i])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert expected.max() > 1.0 and expected.min() >= 0.0  # the cases span real scores, not only zeros

    # An exact reference beats a caption of another image, for every image.
    for i in range(n):
        exact, unrelated = reward.score(i, refs[i][0]), reward.score(i, refs[(i + n // 2) % n][0])
        assert exact > unrelated, (i, exact, unrelated)
    assert reward.score(0, []) == 0.0


def test_cider_d_uses_the_whole_corpus_for_document_frequencies() -> None:
    """A word in every image's references weighs nothing; a rare one carries the score."""
    refs = [[["a", "dog"]], [["a", "cat"]], [["a", "bird"]]]
    reward = CiderD(refs)
    assert reward.score(0, ["a"]) == 0.0  # df = every image: idf 0
    assert reward.score(0, ["dog"]) > 0.0
    # Scoring one image never depends on which other images are scored alongside it.
    assert reward.scores([0], [["a", "dog"]])[0] == reward.scores([2, 0, 1], [["x"], ["a", "dog"], ["y"]])[1]


def test_cider_d_per_data_set_scores_each_image_as_its_own_data_set_alone() -> None:
    """With groups, an image's score uses only its own data set's document frequencies and image count."""
    flickr = [[["a", "dog", "runs"], ["a", "dog", "jumps"]], [["a", "man", "runs"]], [["a", "dog", "swims"]]]
    coco = [[["a", "pizza", "on", "a", "plate"]], [["a", "dog", "on", "a", "couch"]]]
    grouped = CiderD(flickr + coco, groups=["flickr8k"] * 3 + ["coco"] * 2)
    alone = [CiderD(flickr), CiderD(coco)]
    hyp = ["a", "dog", "runs"]
    for i in range(5):
        own, row = (alone[0], i) if i < 3 else (alone[1], i - 3)
        assert grouped.score(i, hyp) == own.score(row, hyp)
    # Pooled, "dog" is in 3 of 5 images, not 2 of 3: another weight, another score.
    assert CiderD(flickr + coco).score(0, ["dog"]) != grouped.score(0, ["dog"])


def test_cider_d_scores_the_end_of_a_caption() -> None:
    """A caption cut off mid-phrase loses the reference's ending n-grams: "in the <end>" is in no reference."""
    refs = [
        [["a", "dog", "runs", "in", "the", "park"], ["a", "dog", "plays", "in", "the", "park"]],
        [["a", "man", "rides", "a", "bike"]],
        [["two", "girls", "in", "the", "snow"]],
    ]
    cut, full = ["a", "dog", "runs", "in", "the"], ["a", "dog", "runs", "in", "the", "park"]
    marked, unmarked = CiderD(refs), CiderD(refs, mark_end=False)
    assert marked.score(0, full) > marked.score(0, cut) > 0.0
    # Marking the end widens the gap between the complete caption and the cut one.
    assert marked.score(0, cut) / marked.score(0, full) < unmarked.score(0, cut) / unmarked.score(0, full)


# -- the sampler --------------------------------------------------------------------------------

WORDS = "a dog runs on the grass cat sits mat red ball".split()


def _tiny_model(max_len: int, hidden_dim: int = 32, seed: int = 0) -> tuple[CaptionModel, Vocab]:
    torch.manual_seed(seed)
    vocab = Vocab(("<pad>", "<start>", "<end>", "<unk>", *WORDS))
    cfg = ModelConfig(
        vocab_size=len(vocab),
        backbone="tiny",
        pretrained=False,
        feature_dim=16,
        attention_dim=16,
        embed_dim=16,
        hidden_dim=hidden_dim,
        dropout=0.0,
        max_len=max_len,
    )
    return CaptionModel(cfg), vocab


def _inputs(model: CaptionModel, n: int) -> torch.Tensor:
    """Cached-frozen-backbone output of ``n`` clearly different random images."""
    frozen, _ = model.frozen_and_trainable_backbone()
    x = torch.stack([torch.randn(3, 64, 64) * (1 + 2 * i) + 3 * i for i in range(n)])
    with torch.no_grad():
        return frozen(x)


def _teacher_forced_logprobs(
    model: CaptionModel,
    inputs: torch.Tensor,
    images: torch.Tensor,
    tokens: torch.Tensor,
    vocab: Vocab,
    say_once: tuple[int, ...] = (),
) -> torch.Tensor:
    """The log-probabilities the model gives ``tokens`` (rows of ``images``) under the sampling rules, words of
    ``say_once`` barred once drawn."""
    _, tuned = model.frozen_and_trainable_backbone()
    max_len = model.config.max_len
    grid = tuned(inputs).flatten(2).transpose(1, 2)[images]  # (B, L, C)
    start = torch.full((len(tokens), 1), vocab.start_id, dtype=torch.long)
    logits, _ = model(grid, torch.cat([start, tokens], dim=1))  # (B, T, V)
    allowed = torch.ones(logits.shape[1:], dtype=torch.bool)  # (T, V)
    allowed[:, [vocab.pad_id, vocab.start_id, vocab.unk_id]] = False
    allowed[0, vocab.end_id] = False
    if max_len < logits.shape[1]:
        allowed[max_len] = False
        allowed[max_len, vocab.end_id] = True
    once = torch.zeros(len(vocab), dtype=torch.bool)
    once[list(say_once)] = True
    drawn = torch.nn.functional.one_hot(tokens, len(vocab)).bool() & once  # (B, T, V)
    said = torch.cat([torch.zeros_like(drawn[:, :1]), drawn.cumsum(dim=1)[:, :-1] > 0], dim=1)  # before step t
    logprobs = torch.log_softmax(logits.masked_fill(~allowed | said, float("-inf")), dim=2)
    chosen = logprobs.gather(2, tokens.clamp(min=vocab.end_id).unsqueeze(2)).squeeze(2)  # pads: any valid id
    return torch.where(tokens == 0, torch.zeros_like(chosen), chosen)


def _check_rows(tokens: torch.Tensor, logps: torch.Tensor, vocab: Vocab, max_len: int) -> list[int]:
    """Assert the sampling rules on every row; returns each row's <end> index."""
    assert tokens.dtype == torch.long and tokens.shape == logps.shape and tokens.shape[1] <= max_len + 1
    ends = []
    for row, lp in zip(tokens.tolist(), logps.tolist()):
        assert vocab.end_id in row, row
        end = row.index(vocab.end_id)
        ends.append(end)
        assert 1 <= end <= max_len, row  # at least one word; never longer than max_len
        assert all(t >= 4 for t in row[:end]), row  # only real words before <end>
        assert all(t == 0 for t in row[end + 1 :]) and all(v == 0.0 for v in lp[end + 1 :]), (row, lp)
        assert all(math.isfinite(v) and v <= 0.0 for v in lp[: end + 1]), lp
    return ends


def test_sampler_obeys_the_search_rules() -> None:
    max_len = 4
    model, vocab = _tiny_model(max_len)
    model.eval()
    _, tuned = model.frozen_and_trainable_backbone()
    sampler = scst.Sampler(model, tuned, search_spec(vocab, model.config), len(vocab))
    inputs = _inputs(model, 3)
    k = 40

    # Make the model want <pad>, <start>, <unk> and <end> above all: only <end> may be drawn, and not first.
    with torch.no_grad():
        model.decoder.out.bias[:4] = 30.0
    tokens, logps = sampler(inputs, k)
    assert tokens.shape[0] == 3 * k
    ends = _check_rows(tokens, logps, vocab, max_len)
    assert set(ends) == {1}  # a word (never <end> first), then the <end> it so wants
    assert (tokens[:, 0] >= 4).all()

    # Never wanting <end>: every caption runs to max_len words and is ended there.
    with torch.no_grad():
        model.decoder.out.bias[:4] = 0.0
        model.decoder.out.bias[vocab.end_id] = -20.0
    tokens, logps = sampler(inputs, k)
    assert _check_rows(tokens, logps, vocab, max_len) == [max_len] * (3 * k)
    assert tokens.shape == (3 * k, max_len + 1)
    assert (logps[:, max_len] == 0.0).all()  # the forced <end> was certain

    # A neutral model: a mix of lengths, all within the rules.
    with torch.no_grad():
        model.decoder.out.bias.zero_()
    torch.manual_seed(1)
    tokens, logps = sampler(inputs, k)
    ends = _check_rows(tokens, logps, vocab, max_len)
    assert len(set(ends)) > 1


def test_sampler_rows_are_image_major_and_differentiable() -> None:
    """Row r holds a caption of image r // k: its log-probabilities are those the model gives it for that image."""
    max_len = 4
    model, vocab = _tiny_model(max_len)
    _, tuned = model.frozen_and_trainable_backbone()
    sampler = scst.Sampler(model, tuned, search_spec(vocab, model.config), len(vocab))
    inputs = _inputs(model, 3)
    k = 5
    torch.manual_seed(2)
    tokens, logps = sampler(inputs, k)
    assert tokens.shape[0] == logps.shape[0] == 3 * k

    owner = torch.arange(3).repeat_interleave(k)  # image-major: 0,0,0,0,0,1,1,...
    once = tuple(sampler.spec.say_once)  # the runtime's: no word but the articles and the like said twice
    with torch.no_grad():
        expected = _teacher_forced_logprobs(model, inputs, owner, tokens, vocab, once)
        wrong = _teacher_forced_logprobs(model, inputs, torch.arange(3).repeat(k), tokens, vocab, once)  # image-minor
    torch.testing.assert_close(logps.detach(), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(expected, wrong, atol=1e-3)  # the images differ enough to tell the layouts apart

    logps.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.decoder.out.weight.grad.abs().sum() > 0
    assert model.decoder.embed.weight.grad[[vocab.pad_id, vocab.unk_id]].abs().sum() == 0  # never fed in


def test_sampler_says_a_said_once_word_once_and_scores_it_from_what_was_left() -> None:
    """A model that wants "dog" above all, then "a", never <end>: without the rule every caption is "dog dog ..";
    with "dog" said once, each caption is "dog" then "a"s (articles may repeat), and each step's log-probability
    is the drawn word's among the words still allowed to its row."""
    max_len = 5
    model, vocab = _tiny_model(max_len)
    model.eval()
    _, tuned = model.frozen_and_trainable_backbone()
    dog, a = vocab.encode(["dog", "a"])
    once = tuple(i for i in range(4, len(vocab)) if i != a)
    inputs = _inputs(model, 3)
    with torch.no_grad():
        model.decoder.out.bias[dog], model.decoder.out.bias[a], model.decoder.out.bias[vocab.end_id] = 30.0, 24.0, -20.0
    rules = dataclasses.replace(search_spec(vocab, model.config), say_once=())
    torch.manual_seed(3)
    tokens, _ = scst.Sampler(model, tuned, rules, len(vocab))(inputs, 4)
    assert (tokens[:, :max_len] == dog).all()

    said_once = scst.Sampler(model, tuned, dataclasses.replace(rules, say_once=once), len(vocab))
    tokens, logps = said_once(inputs, 4)
    _check_rows(tokens, logps, vocab, max_len)
    assert tokens[:, :max_len].tolist() == [[dog] + [a] * (max_len - 1)] * 12
    owner = torch.arange(3).repeat_interleave(4)
    expected = _teacher_forced_logprobs(model, inputs, owner, tokens, vocab, once)
    torch.testing.assert_close(logps.detach(), expected, atol=1e-5, rtol=1e-5)
    assert (logps[:, 1:max_len] > -1e-3).all()  # "a" is nearly certain once "dog" is barred (not e^-6 of it)


def test_sampler_under_a_phrase_penalty_keeps_to_the_training_sentences_trigrams() -> None:
    """The model that wants "dog" above all: with a heavy penalty on words making a trigram no training sentence
    has, every sample is the one sentence the corpus allows, each word drawn from the penalised distribution."""
    from capcli.phrasing import PhraseRule
    from capcli.train.model import region_grid

    max_len = 5
    model, vocab = _tiny_model(max_len)
    model.eval()
    _, tuned = model.frozen_and_trainable_backbone()
    dog, a = vocab.encode(["dog", "a"])
    with torch.no_grad():
        model.decoder.out.bias[dog], model.decoder.out.bias[a], model.decoder.out.bias[vocab.end_id] = 30.0, 24.0, -20.0
        features = model.features(region_grid(tuned(_inputs(model, 3))))  # (3, L, D)
    rules = dataclasses.replace(search_spec(vocab, model.config), say_once=())
    allowed = scst.allowed_tokens(rules, len(vocab))
    torch.manual_seed(3)
    tokens, _ = scst.sample(model.decoder, rules, allowed, features, 4)
    assert (tokens[:, :max_len] == dog).all()

    phrasing = PhraseRule.from_sentences(["a dog runs on the grass".split()], vocab, 100.0)
    tokens, logps = scst.sample(model.decoder, rules, allowed, features, 4, phrasing=phrasing)
    _check_rows(tokens, logps, vocab, max_len)
    assert scst.words_of(tokens.numpy(), vocab) == [["a", "dog", "runs", "on", "the"]] * 12  # cut at max_len
    assert (logps[:, :max_len] > -1e-3).all()  # each word is all but certain once the others cost 100


def test_words_of_cuts_at_end() -> None:
    vocab = Vocab(("<pad>", "<start>", "<end>", "<unk>", *WORDS))
    a, dog, runs = vocab.encode(["a", "dog", "runs"])
    tokens = np.array([[a, dog, vocab.end_id, 0], [runs, a, dog, vocab.end_id], [dog, vocab.end_id, 0, 0]])
    assert scst.words_of(tokens, vocab) == [["a", "dog"], ["runs", "a", "dog"], ["dog"]]


# -- the baseline -------------------------------------------------------------------------------


def test_advantages_are_reward_minus_the_other_samples_mean() -> None:
    rng = np.random.default_rng(0)
    k = 4
    rewards = rng.uniform(0, 3, size=3 * k).astype(np.float32)
    adv = scst.advantages(rewards, k)
    assert adv.shape == (3 * k,)
    np.testing.assert_allclose(adv.reshape(3, k).sum(axis=1), 0.0, atol=1e-5)  # per image
    r = rewards.reshape(3, k)
    others = np.array([[(r[b].sum() - r[b, j]) / (k - 1) for j in range(k)] for b in range(3)])
    np.testing.assert_allclose(adv, (r - others).reshape(-1), rtol=1e-6)

    # One sample better than its siblings is pushed up, they are pushed down; another image's rewards don't count.
    adv = scst.advantages(np.array([1.0, 1.0, 1.0, 5.0, 9.0, 9.0, 9.0, 9.0], dtype=np.float32), k)
    np.testing.assert_allclose(adv, [-4 / 3, -4 / 3, -4 / 3, 4.0, 0.0, 0.0, 0.0, 0.0], atol=1e-6)


# -- the policy gradient ------------------------------------------------------------------------


def test_self_critical_loss_raises_the_reward() -> None:
    model, vocab = _tiny_model(max_len=8, seed=1)  # seeds 1-3 all learn within 300 updates; 0 mixes the images up
    frozen, tuned = model.frozen_and_trainable_backbone()
    refs = [["a dog runs on the grass".split()] * 2, ["a cat sits on the mat".split()] * 2]
    reward = CiderD(refs + [["red ball".split()]])  # a third image: "a", "on" are not in every image's references
    sampler = scst.Sampler(model, tuned, search_spec(vocab, model.config), len(vocab))
    inputs = _inputs(model, 2)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    k = 8
    torch.manual_seed(0)
    rewards = []
    for _ in range(300):
        loss, total = scst.self_critical_loss(sampler, inputs, [0, 1], k, reward, vocab)
        assert loss.ndim == 0 and math.isfinite(float(loss.detach()))
        optimizer.zero_grad()
        (loss / (2 * k)).backward()
        optimizer.step()
        rewards.append(total / (2 * k))
    before, after = np.mean(rewards[:10]), np.mean(rewards[-20:])
    assert before < 2.0
    assert after > 5.0, (before, after)
    # Fresh samples of each image score high against its own references, not against the other image's.
    with torch.no_grad():
        tokens, _ = sampler(inputs, 20)
    captions = scst.words_of(tokens.numpy(), vocab)
    own = reward.scores([0] * 20 + [1] * 20, captions).reshape(2, 20).mean(axis=1)
    swapped = reward.scores([1] * 20 + [0] * 20, captions).reshape(2, 20).mean(axis=1)
    assert (own > 4.0).all() and (own > swapped + 2.0).all(), (own, swapped)


# -- through train() ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scst_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 real photos, two captions each, as a generic CSV whose dev split is copies of the same photos."""
    captions = {name: CAPTIONS[name] for name in NAMES[:4]}
    root = tmp_path_factory.mktemp("scst-data")
    rows = ["image,caption,split"]
    for name, texts in captions.items():
        copy_photos(root, [name])
        copy_photos(root, [name], prefix="dev-")
        rows += [f"{name},{text},train" for text in texts[:2]] + [f"dev-{name},{texts[0]},dev"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    return root


def _options(data: Path, out: Path, cache: Path, **kw) -> TrainOptions:
    return TrainOptions(dataset="csv", data=str(data), out=str(out), cache_dir=str(cache), **{**TINY, **kw})


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def xent_run(scst_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A cross-entropy run of one epoch of two steps (8 captions, 4 a step): (run folder, feature cache).

    Warming up for half of two steps is the case that used to crash OneCycleLR.
    """
    root = tmp_path_factory.mktemp("xent")
    train(_options(scst_data, root / "run", root / "cache", epochs=1, batch_size=4, warmup=0.5, dropout=0.3))
    return root / "run", root / "cache"


@pytest.mark.parametrize(
    ("epochs", "batch_size", "warmup", "steps"),
    [(1, 8, 0.05, 1), (2, 8, 0.05, 1), (1, 4, 0.5, 2), (5, 4, 0.1, 2), (1, 3, 0.05, 3)],
)
def test_runs_of_very_few_steps_train(
    scst_data: Path, tmp_path: Path, epochs: int, batch_size: int, warmup: float, steps: int
) -> None:
    """Debug runs of a handful of steps train: OneCycleLR used to divide by zero when warmup * steps was 1."""
    out = tmp_path / "run"
    record = train(_options(scst_data, out, tmp_path / "cache", epochs=epochs, batch_size=batch_size, warmup=warmup))
    history = _history(out)
    assert [h["epoch"] for h in history] == list(range(1, epochs + 1))
    assert [h["step"] for h in history] == [steps * e for e in range(1, epochs + 1)]
    for h in history:
        assert math.isfinite(h["train_loss"]) and math.isfinite(h["dev_loss"])
        assert 0.0 < h["lr"] <= TINY["lr"] * (1 + 1e-9)
    assert record["epochs_run"] == epochs
    assert (out / "curves.png").read_bytes()[:8] == PNG


def test_xent_run_of_two_steps(xent_run: tuple[Path, Path]) -> None:
    out, _ = xent_run
    history = _history(out)
    assert len(history) == 1 and history[0]["step"] == 2 and "train_loss" in history[0]
    assert "train_reward" not in history[0]
    run = json.loads((out / "train.json").read_text())
    assert "initialised_from" not in run and "initialised_from" not in checkpoint.load(out / "best.pt")["provenance"]


def test_cider_run_starts_from_the_init_checkpoint(
    scst_data: Path, xent_run: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_dir, cache = xent_run
    said_once_rules = []  # train's samples may repeat words, as they did before the runtime's rule
    sample = scst.sample
    monkeypatch.setattr(
        scst,
        "sample",
        lambda decoder, spec, *rest: said_once_rules.append(spec.say_once) or sample(decoder, spec, *rest),
    )
    init = checkpoint.load(init_dir / "best.pt")
    xent_command = json.loads((init_dir / "train.json").read_text())["command"]
    assert init["provenance"]["command"] == xent_command
    out = tmp_path / "scst"
    # The command line's architecture disagrees with the checkpoint's everywhere: the checkpoint wins.
    record = train(
        _options(
            scst_data,
            out,
            cache,
            objective="cider",
            init=str(init_dir / "best.pt"),
            epochs=2,
            samples=3,
            lr=1e-3,
            hidden_dim=48,
            embed_dim=16,
            feature_dim=24,
            attention_dim=8,
            decoder="lstm",
            dropout=0.1,
            max_len=7,
            min_count=3,
            finetune_blocks=1,
        )
    )

    last = checkpoint.load(out / "last.pt")
    for name in ARCHITECTURE:
        assert last["config"][name] == init["config"][name], name
        assert last["options"][name] == init["options"][name] == record["options"][name], name
    assert last["config"]["hidden_dim"] == 64 and last["config"]["decoder"] == "gru"
    assert last["options"]["min_count"] == record["options"]["min_count"] == 1
    # finetune_blocks stays the caller's: the top backbone stage is trained, the rest is the init's.
    assert last["config"]["finetune_blocks"] == last["options"]["finetune_blocks"] == 1
    assert last["vocab"] == init["vocab"]
    changed = {k for k, v in init["model"].items() if not torch.equal(v, last["model"][k])}
    assert "decoder.out.weight" in changed
    top_stage = {"backbone.stages.2.0.weight", "backbone.stages.2.0.bias"}
    assert {k for k in changed if k.startswith("backbone.")} <= top_stage
    assert not {"backbone.stages.0.0.weight", "backbone.stages.1.0.weight"} & changed

    assert said_once_rules and set(said_once_rules) == {()}
    # The recorded command is the run's effective one.
    assert "--objective cider" in record["command"] and "--samples 3" in record["command"]
    assert "--hidden-dim 64" in record["command"] and "--hidden-dim 48" not in record["command"]

    history = _history(out)
    assert [h["epoch"] for h in history] == [1, 2]
    for h in history:
        assert "train_loss" not in h and "train_attention" not in h
        assert math.isfinite(h["train_reward"]) and h["train_reward"] >= 0.0
        assert {"dev_loss", "dev_BLEU-4", "dev_CIDEr", "lr"} <= h.keys()

    run = json.loads((out / "train.json").read_text())
    for provenance in (run, record, last["provenance"]):
        started = provenance["initialised_from"]
        assert started["command"] == xent_command
        assert started["checkpoint"] == str(init_dir / "best.pt")
        assert started["epochs"] == 1 and started["best_epoch"] == 1
        assert started["dev_metrics"] == init["provenance"]["dev_metrics"]

    payload = torch.load(out / "best.pt", weights_only=True)
    assert payload["provenance"]["initialised_from"]["command"] == xent_command
    model, vocab = checkpoint.model_from_checkpoint(payload)
    assert len(vocab) == model.config.vocab_size and model.config.hidden_dim == 64
    assert (out / "curves.png").read_bytes()[:8] == PNG
    assert (out / "best_dev_captions.jsonl").is_file()


def test_cider_run_resumes_bit_for_bit(scst_data: Path, xent_run: tuple[Path, Path], tmp_path: Path) -> None:
    init_dir, cache = xent_run
    # A copy of the init checkpoint, gone by the time of --resume: the run carries all it needs.
    init = tmp_path / "init.pt"
    shutil.copyfile(init_dir / "best.pt", init)
    xent_command = checkpoint.load(init)["provenance"]["command"]
    kw = dict(objective="cider", init=str(init), epochs=3, samples=3, batch_size=2, lr=1e-3)
    straight = tmp_path / "straight"
    train(_options(scst_data, straight, cache, **kw))

    resumed = tmp_path / "resumed"
    train_one_epoch_then_stop(_options(scst_data, resumed, cache, **kw))
    assert checkpoint.load(resumed / "last.pt")["epoch"] == 1
    init.unlink()
    # Options come from the checkpoint, the objective too; the new command line's are ignored.
    train(_options(scst_data, resumed, cache, epochs=99, lr=1.0, samples=7), resume=True)

    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(resumed / "last.pt")
    assert a["epoch"] == 3
    assert_same_training_state(a, b)
    assert {**a["options"], "out": None} == {**b["options"], "out": None}
    assert b["options"]["samples"] == 3 and b["options"]["objective"] == "cider" and b["options"]["lr"] == 1e-3
    rewards = [h["train_reward"] for h in a["history"]]
    assert rewards == [h["train_reward"] for h in b["history"]] and len(rewards) == 3
    assert all("train_loss" not in h for h in b["history"])
    assert len((resumed / "metrics.jsonl").read_text().splitlines()) == 3
    run = json.loads((resumed / "train.json").read_text())
    assert run["initialised_from"]["command"] == xent_command
    assert b["provenance"]["initialised_from"]["command"] == xent_command
    # The command is the first session's (the --init it started from), not the --resume one's.
    straight_command = json.loads((straight / "train.json").read_text())["command"]
    assert run["command"] == straight_command.replace(str(straight), str(resumed))
    assert f"--init {init}" in run["command"] and "--objective cider" in run["command"]


# -- refusals -----------------------------------------------------------------------------------


def test_cider_objective_needs_init(scst_data: Path, tmp_path: Path) -> None:
    with pytest.raises(FatalError, match="--init"):
        train(_options(scst_data, tmp_path / "run", tmp_path / "cache", objective="cider"))
    assert not (tmp_path / "run" / "last.pt").exists()


def test_cli_rejects_fewer_than_two_samples_and_cider_without_init(scst_data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from capcli.cli import main

    base = [
        "train",
        "--dataset",
        "csv",
        "--data",
        str(scst_data),
        "--out",
        str(tmp_path / "run"),
        "--backbone",
        "tiny",
        "--no-pretrained",
        "--workers",
        "0",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    runner = CliRunner()
    result = runner.invoke(main, [*base, "--objective", "cider", "--samples", "1"])
    assert result.exit_code == 2, result.output
    assert "--samples" in result.output
    assert not (tmp_path / "run").exists()

    result = runner.invoke(main, [*base, "--objective", "cider"])
    assert result.exit_code == 1, result.output
    assert "--init" in result.output


def test_recorded_command_parses_back_to_the_same_options(tmp_path: Path) -> None:
    """train.json's command is a real command line: booleans become --no-... flags, and click reads it back."""
    import shlex

    from capcli.cli.train import train_command

    (tmp_path / "data").mkdir()
    (tmp_path / "x.pt").write_bytes(b"")
    options = TrainOptions(
        dataset="csv",
        data=str(tmp_path / "data"),
        out=str(tmp_path / "run"),
        pretrained=False,
        init=str(tmp_path / "x.pt"),
        objective="cider",
        score_end=False,
        lr=2e-4,
        epochs=3,
    )
    args = shlex.split(options.command())
    assert args[:2] == ["capcli", "train"] and "--no-pretrained" in args and "--no-score-end" in args
    params = train_command.make_context("train", args[2:]).params
    assert params.pop("resume") is False
    assert TrainOptions(pretrained=not params.pop("no_pretrained"), **params) == options
