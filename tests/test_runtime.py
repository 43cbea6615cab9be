"""The onnxruntime Captioner on a tiny exported bundle, and ``capcli info``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from example_photos import example_paths

from capcli.bundle import load_bundle
from capcli.cli import main
from capcli.decode import DANGLING_WORDS, Decoding, block_dangling_end, block_repeats
from capcli.errors import FatalError
from capcli.images import load
from capcli.runtime import CPU, CUDA, ENCODE_CHUNK, Captioner, parse_device
from capcli.text import SPECIALS, detokenize


@pytest.fixture(scope="module")
def bundle(tiny_bundle: Path):
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def images(bundle) -> np.ndarray:
    """Four real photos (the examples) preprocessed the runtime's way."""
    return np.stack([load(str(f), bundle.preprocess).array for f in example_paths()[:4]])


@pytest.mark.parametrize("beam", [1, 3])
def test_captions_are_sentences_of_vocabulary_words(bundle, images: np.ndarray, beam: int) -> None:
    captions = Captioner(bundle, device="cpu", beam=beam).caption(images)
    assert len(captions) == len(images)
    for cap in captions:
        assert 1 <= len(cap.tokens) <= bundle.max_len
        assert all(t in bundle.vocab.tokens and t not in SPECIALS for t in cap.tokens)
        assert cap.text == detokenize(cap.tokens) and cap.text.endswith(".") and cap.text[0].isupper()
        assert np.isfinite(cap.score) and cap.score <= 0
        assert cap.alphas is not None and cap.alphas.shape == (len(cap.tokens), 8, 8)
        np.testing.assert_allclose(cap.alphas.sum(axis=(1, 2)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("beam", [1, 3])
def test_no_caption_ends_on_a_dangling_word(bundle, images: np.ndarray, beam: int) -> None:
    captioner = Captioner(bundle, device="cpu", beam=beam, max_len=6)
    vocab = bundle.vocab
    words = [vocab.tokens[i] for i in captioner.spec.no_end_after]
    assert {"a", "the", "in"} <= set(words) <= set(DANGLING_WORDS)  # the tiny vocabulary's share of the list
    for cap in captioner.caption(images):
        assert len(cap.tokens) == 6 or cap.tokens[-1] not in DANGLING_WORDS, cap.tokens
    assert Captioner(bundle, device="cpu", beam=beam, allow_dangling_end=True).spec.no_end_after == ()


@pytest.mark.parametrize("beam", [1, 3])
def test_batch_equals_one_image_at_a_time(bundle, images: np.ndarray, beam: int) -> None:
    captioner = Captioner(bundle, device="cpu", beam=beam)
    together = captioner.caption(images)
    for i, cap in enumerate(together):
        alone = captioner.caption(images[i : i + 1])[0]
        assert alone.tokens == cap.tokens
        assert alone.score == pytest.approx(cap.score, abs=1e-5)


SHIPPED = Path(__file__).resolve().parents[1] / "capcli" / "models" / "default"


def test_a_photos_caption_and_score_do_not_depend_on_its_batch() -> None:
    """The shipped model at the default precision (the per-row int8 decoder on the CPU): each example photo
    alone, among 15 others, among 6 and in a pair gets the same caption and the very same score."""
    bundle = load_bundle(SHIPPED)
    captioner = Captioner(bundle, device="cpu")
    assert captioner.precision == "int8"
    photos = np.stack([load(str(f), bundle.preprocess).array for f in example_paths()])
    n = len(photos)
    others = np.concatenate([photos[:, :, ::-1], photos[:, :, :, ::-1], photos[:, :, ::-1, ::-1]])  # 3n flips
    alone = [(c.text, c.score) for c in (captioner.caption(p[None])[0] for p in photos)]
    rng = np.random.default_rng(0)
    batches = [np.concatenate([photos, others[: 16 - n]]), np.concatenate([photos[::-1], others[-2:]])]
    batches += [np.stack([p, others[i]]) for i, p in enumerate(photos)]
    for batch in batches:
        order = rng.permutation(len(batch))
        captions = captioner.caption(batch[order])
        for position, source in enumerate(order):
            for i in range(n):
                if np.array_equal(batch[source], photos[i]):
                    assert (captions[position].text, captions[position].score) == alone[i], (len(batch), i)


def test_batch_size_does_not_change_the_records(tmp_path: Path) -> None:
    """End to end with the shipped model: --batch-size 1 and the default write the same records."""
    from example_photos import EXAMPLES

    outputs = []
    for size in ("1", "16"):
        out = tmp_path / f"b{size}.jsonl"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "capcli",
                "caption",
                str(EXAMPLES),
                "--model",
                str(SHIPPED),
                "--device",
                "cpu",
                "--batch-size",
                size,
                "-o",
                str(out),
            ],
            capture_output=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        outputs.append(out.read_text())
    assert outputs[0] == outputs[1] and outputs[0].count('"status": "ok"') == len(list(EXAMPLES.glob("*.jpg")))


def test_greedy_equals_greedy_decoding_in_pytorch(tmp_path: Path, images: np.ndarray) -> None:
    """onnxruntime + numpy search pick the words PyTorch picks under the same masking rules."""
    torch = pytest.importorskip("torch")
    from capcli.export import export_bundle
    from tiny_bundle import make_tiny_model, tiny_vocab

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, "lstm", seed=3)
    bundle = load_bundle(export_bundle(model, vocab, tmp_path / "b"))
    captioner = Captioner(bundle, device="cpu", decoding=Decoding(beam=1, no_repeated_words=True))
    ours = captioner.caption(images)
    for image, cap in zip(images, ours):
        words: list[int] = []
        with torch.no_grad():
            features = model.features(model.backbone_grid(torch.from_numpy(image[None])))  # (1, L, D)
            keys, state = model.decoder.init(features)
            token = torch.tensor([vocab.start_id])
            for t in range(bundle.max_len + 1):
                logits, state, _ = model.decoder.step(token, state, features, keys)
                masked = captioner.spec.mask(torch.log_softmax(logits, 1).numpy(), t)
                # The search's history rules too: no repeated trigram, no ending on "a"/"the"/"in"...
                history = np.array([words], dtype=np.int64).reshape(1, len(words))
                block_repeats(masked, history, captioner.spec.no_repeat_ngram)
                block_dangling_end(masked, history, captioner.spec)
                masked[0, [w for w in words if w in captioner.spec.say_once]] = -np.inf  # ... no word said twice
                token = torch.from_numpy(masked.argmax(axis=1))
                if int(token) == vocab.end_id:
                    break
                words.append(int(token))
        assert cap.tokens == [vocab.tokens[i] for i in words]


def test_max_len_and_threads(bundle, images: np.ndarray) -> None:
    for cap in Captioner(bundle, device="cpu", beam=2, max_len=2, threads=1).caption(images):
        assert 1 <= len(cap.tokens) <= 2


def test_empty_batch_and_bad_arguments(bundle) -> None:
    captioner = Captioner(bundle, device="cpu")
    assert captioner.caption(np.zeros((0, 3, 64, 64), np.float32)) == []
    with pytest.raises(ValueError, match=r"images must be \(B, 64, 64, 3\) uint8 pixels, or \(B, 3, 64, 64\) float32"):
        captioner.caption(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="beam"):
        Captioner(bundle, beam=0)
    with pytest.raises(ValueError, match="device must be"):
        Captioner(bundle, device="tpu")


def test_a_big_batch_is_encoded_in_chunks_on_the_cpu(bundle, images: np.ndarray) -> None:
    """Ctrl-C is seen only when onnxruntime returns to Python: on the CPU a big batch is encoded
    ENCODE_CHUNK images per run (counted here), so a second Ctrl-C ends it within one small run."""
    captioner = Captioner(bundle, device="cpu")
    session, runs = captioner._encoder, []

    class CountingSession:
        def run(self, names: list[str], feeds: dict[str, np.ndarray], options: ort.RunOptions) -> list[np.ndarray]:
            runs.append(len(feeds["image"]))
            return session.run(names, feeds, options)

    captioner._encoder = CountingSession()
    encoded = captioner.encode(np.concatenate([images] * 9))  # 36 images
    assert runs == [ENCODE_CHUNK, ENCODE_CHUNK, 36 - 2 * ENCODE_CHUNK]
    alone = captioner.encode(images)
    for name, value in encoded.items():
        np.testing.assert_allclose(value, np.concatenate([alone[name]] * 9), rtol=1e-5, atol=1e-6)


def test_parse_device() -> None:
    assert parse_device("auto") == ("auto", 0)
    assert parse_device("CUDA:1") == ("cuda", 1)
    for bad in ("cpu:0", "gpu", "cuda:x", ""):
        with pytest.raises(ValueError):
            parse_device(bad)


def test_cpu_device_uses_only_the_cpu(bundle) -> None:
    captioner = Captioner(bundle, device="cpu")
    assert captioner.providers == [CPU] and captioner.device == "cpu" and captioner.cuda_problem is None


@pytest.mark.parametrize("beam", [1, 3])
def test_the_gpu_paths_context_binding_gives_the_same_captions(bundle, images: np.ndarray, beam: int) -> None:
    """Under CUDA each image's context is uploaded once and bound to every step (IOBinding); the same code
    with the memory on the CPU provider must give the plain runs' captions and scores, bit for bit."""
    plain = Captioner(bundle, device="cpu", beam=beam, search="numpy")
    bound = Captioner(bundle, device="cpu", beam=beam, search="numpy")
    bound._context_memory = ("cpu", 0)  # what CUDA sets to ("cuda", N)
    context = bound.bind_context(bound.encode(images))
    assert all(isinstance(value, ort.OrtValue) for value in context.values())
    expected = plain.caption(images)
    got = bound.caption(images)
    assert [(c.tokens, c.score) for c in got] == [(c.tokens, c.score) for c in expected]
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a.alphas, b.alphas)


@pytest.mark.parametrize("beam", [1, 3])
def test_the_gpu_paths_encoder_outputs_in_place_give_the_graphs_captions(beam: int) -> None:
    """Under CUDA the search graph reads the encoder's outputs where the encoder left them; the same code with
    the memory on the CPU provider gives the plain graph's captions, scores and tags, a lone image too
    (the shipped model: a tagger, search graphs)."""
    shipped = load_bundle(SHIPPED)
    photos = np.stack([load(str(f), shipped.preprocess).array for f in example_paths()[:3]])
    plain = Captioner(shipped, device="cpu", beam=beam, search="graph", tags=3, lanes=1)
    in_place = Captioner(shipped, device="cpu", beam=beam, search="graph", tags=3, lanes=1)
    in_place._context_memory = ("cpu", 0)  # what CUDA sets to ("cuda", N)
    assert all(isinstance(v, ort.OrtValue) for v in in_place.encode_in_place(photos[:2]).values())
    for batch in (photos, photos[:1]):
        expected, got = plain.caption(batch), in_place.caption(batch)
        assert len(got) == len(batch) and all(c.tags and len(c.tags) == 3 for c in got)
        assert [(c.tokens, c.score, c.tags) for c in got] == [(c.tokens, c.score, c.tags) for c in expected]


def test_auto_and_cuda_report_what_happened(bundle) -> None:
    auto = Captioner(bundle, device="auto", beam=3)
    if auto.device.startswith("cuda"):  # a GPU machine: CUDA must compute what the CPU computes
        assert auto.providers[0] == CUDA and auto.cuda_problem is None
        cpu = Captioner(bundle, device="cpu")
        # Pixels, which both take (the CUDA encoder normalises them itself; see test_pixel_input.py).
        images = np.stack([load(str(f), bundle.preprocess, pixels=True).array for f in example_paths()[:4]])
        enc_gpu, enc_cpu = auto.encode(images), cpu.encode(images)
        for name, value in enc_cpu.items():
            np.testing.assert_allclose(enc_gpu[name], value, atol=1e-3)
        tokens = np.arange(len(images), dtype=np.int64) + 4
        state = {"h": enc_cpu["h"]}
        gpu_step = auto.step(tokens, state, auto.bind_context(enc_cpu))  # context bound on the GPU
        cpu_step = cpu.step(tokens, state, cpu.bind_context(enc_cpu))
        np.testing.assert_allclose(gpu_step[0], cpu_step[0], atol=1e-3)
        np.testing.assert_allclose(gpu_step[1]["h"], cpu_step[1]["h"], atol=1e-3)
        assert len(auto.caption(images)) == len(images)
        assert Captioner(bundle, device="cuda:0").providers[0] == CUDA
        return
    assert auto.providers == [CPU]  # silently on the CPU, but it knows why
    if CUDA in ort.get_available_providers():
        assert auto.cuda_problem and "without saying why" not in auto.cuda_problem  # onnxruntime's logged reason
    with pytest.raises(FatalError, match=r"--device cuda: CUDA is not usable: \S"):
        Captioner(bundle, device="cuda")


def test_caption_path_never_imports_torch() -> None:
    code = (
        "import sys, capcli.bundle, capcli.runtime, capcli.decode, capcli.cli\n"
        "bad = [m for m in ('torch', 'onnx', 'torchvision') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_info_without_a_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPCLI_MODEL", raising=False)
    monkeypatch.setattr("capcli.bundle.default_bundle_path", lambda: None)
    result = CliRunner().invoke(main, ["info"])
    assert result.exit_code == 0, result.output
    assert "model:" in result.output and "none" in result.output and "--model PATH" in result.output
    assert "onnxruntime:" in result.output and "providers_available:" in result.output


def test_info_with_a_bundle(tiny_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CAPCLI_MODEL", str(tiny_bundle))
    result = CliRunner().invoke(main, ["info", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    size = len(load_bundle(tiny_bundle).vocab)
    assert facts["model"] == str(tiny_bundle) and facts["model_from"] == "$CAPCLI_MODEL"
    assert facts["vocab_size"] == size and facts["decoder"] == "gru" and facts["backbone"] == "tiny"
    assert facts["grid"] == [8, 8] and facts["providers_used"] == [CPU] and facts["device"] == "cpu"
    assert facts["decoder_precision"] == "float"  # this bundle has no int8 decoder
    assert facts["encoder_input"] == ("uint8 pixels" if facts["device"] != "cpu" else "float32")
    assert facts["onnxruntime"] == ort.__version__ and facts["numpy"] == np.__version__
    text = CliRunner().invoke(main, ["info", "--model", str(tiny_bundle), "--device", "cpu"]).output
    assert "vocab_size:" in text and str(size) in text and "grid:" in text and "8x8" in text


def test_info_with_a_broken_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(tiny_bundle, tmp_path / "b"))
    (broken / "encoder.onnx").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["info", "--model", str(broken)])
    assert result.exit_code == 1
    assert "encoder.onnx: sha256 mismatch" in result.output


def test_info_renders_metrics_with_their_protocol_on_one_line() -> None:
    from capcli.cli.info import _metrics_text

    text = _metrics_text({"dev_beam3": {"BLEU-4": 0.22701, "CIDEr": 0.5755}, "protocol": {"split": "dev", "beam": 3}})
    assert text == "dev_beam3: BLEU-4 0.227, CIDEr 0.576; protocol: split dev, beam 3"
