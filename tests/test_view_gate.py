"""Two-view decoders: the product of the photo's and the concept-only view, their gate, their bundles."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from tiny_bundle import TWO_VIEW, make_tiny_model, tiny_vocab  # noqa: E402

from capcli.bundle import BundleError, load_bundle  # noqa: E402
from capcli.runtime import Captioner  # noqa: E402
from capcli.train.view_gate import everyday_share, fit_gate  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _one_view_copy(model):
    """The same weights without the view gate: an ordinary grounded model."""
    from capcli.train.model import CaptionModel

    plain = CaptionModel(dataclasses.replace(model.config, concept_view=0.0)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "view_gate" not in k})
    return plain


@pytest.mark.parametrize("kind", ["gru", "lstm"])
@pytest.mark.parametrize("weights", [(0.4, 0.4, 0.4, 0.4), (0.0, 0.0, 0.0, 0.0), (0.4, 0.4, 0.0, 0.0)])
def test_two_view_step_is_the_product_of_its_views(kind: str, weights: tuple[float, ...]) -> None:
    model = make_tiny_model(tiny_vocab(), kind, **TWO_VIEW)
    plain = _one_view_copy(model)
    images = torch.randn(2, 3, *model.config.image_size)  # (2, 3, H, W)
    tokens = torch.tensor([3, 4, 5, 6])  # 2 rows per image
    with torch.no_grad():
        encoded = model.encode(images)
        rows = lambda t: t.repeat_interleave(2, dim=0)  # noqa: E731  (M, ...) -> (N, ...)
        state = tuple(rows(s) for s in encoded.state)
        n = len(state) // 2
        assert len(state) == 2 * n + 1 and set(state[-1][:, 0].tolist()) <= {0.0, np.float32(0.4)}
        w = torch.tensor(weights)[:, None]  # (N, 1): as the gate would set it, per photo
        got, new_state, alpha = model.decoder.step(tokens, (*state[:-1], w), *encoded.context)

        own_logits, own_state, own_alpha = plain.decoder.step(tokens, state[:n], *encoded.context)
        alone_logits, alone_state, _ = plain.decoder.step(tokens, state[n : 2 * n], None, None, encoded.concept)
    expected = torch.log_softmax(
        (1 - w) * torch.log_softmax(own_logits, 1) + w * torch.log_softmax(alone_logits, 1), dim=1
    )  # (N, V)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.allclose(got.exp().sum(1), torch.ones(4), atol=1e-5)  # log-probabilities: softmax is a no-op
    for a, b in zip(new_state[:n], own_state):
        assert torch.allclose(a, b, atol=1e-6)
    # The concept-only view advances on the rows the gate took; elsewhere it is neither run nor read.
    taken = w[:, 0] > 0
    for a, advanced, before in zip(new_state[n : 2 * n], alone_state, state[n : 2 * n]):
        assert torch.allclose(a[taken], advanced[taken], atol=1e-6) and torch.equal(a[~taken], before[~taken])
    assert torch.equal(new_state[-1], w) and torch.allclose(alpha, own_alpha)
    # The concept-only view's start is the text-only one: no regions, the concept alone.
    assert torch.allclose(state[n], rows(plain.decoder.init(None, encoded.concept)[1][0]))


def test_fit_gate_separates_the_data_sets_whatever_their_sizes() -> None:
    rng = np.random.default_rng(0)
    flickr = torch.from_numpy(rng.normal(0.0, 1.0, (400, 6)).astype(np.float32))
    everyday = torch.from_numpy(rng.normal(0.0, 1.0, (40, 6)).astype(np.float32))
    everyday[:, 2] += 4.0  # one direction tells them apart; the scales differ
    everyday[:, 5] *= 100.0
    flickr[:, 5] *= 100.0
    gate = fit_gate(flickr, everyday)
    assert everyday_share(gate, flickr) < 0.05 and everyday_share(gate, everyday) > 0.95
    # Folded: the raw inputs go straight in, no standardisation left outside the layer.
    with torch.no_grad():
        assert float(gate(torch.zeros(1, 6))) < 0 < float(gate(torch.tensor([[0.0, 0.0, 4.0, 0.0, 0.0, 0.0]])))


def _images(size: tuple[int, int]) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((12, 3, *size)).astype(np.float32)  # (12, 3, H, W)


@pytest.fixture(scope="module")
def two_view_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-view bundle with its int8 decoder; the gate calls about half of random images everyday."""
    from capcli.export import export_bundle
    from capcli.export.quantize import quantize_bundle

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, **TWO_VIEW)
    with torch.no_grad():  # the gate's threshold between the 6th and 7th of the test's 12 images
        grid, tags = model.grid_and_tags(torch.from_numpy(_images(model.config.image_size)))
        logits = model.decoder.view_gate(model.decoder.summary(model.features(grid), model.decoder.concept_of(tags)))
        model.decoder.view_gate.bias -= logits.sort(dim=0).values[5:7].mean()
    root = tmp_path_factory.mktemp("two-view")
    plain = export_bundle(model, vocab, root / "float", provenance={})
    return quantize_bundle(plain, root / "int8")


@pytest.mark.parametrize("precision", ["float", "int8"])
@pytest.mark.parametrize("beam", [1, 3])
def test_two_view_bundle_graph_equals_numpy(two_view_bundle: Path, precision: str, beam: int) -> None:
    bundle = load_bundle(two_view_bundle)
    assert bundle.concept_view == 0.4 and bundle.state_names == ("h", "h_concept", "concept_weight")
    images = _images(bundle.preprocess.size)
    numpy_ = Captioner(bundle, device="cpu", beam=beam, precision=precision, search="numpy")
    weights = numpy_.encode(images)["concept_weight"][:, 0]
    assert sorted(weights.tolist()) == [0.0] * 6 + [np.float32(0.4)] * 6  # both kinds of photo in the batch
    ref = numpy_.caption(images)
    got = Captioner(bundle, device="cpu", beam=beam, precision=precision, search="graph").caption(images)
    assert [c.tokens for c in ref] == [c.tokens for c in got]
    assert [c.score for c in ref] == [c.score for c in got]


def test_a_concept_view_weight_out_of_range_is_refused(two_view_bundle: Path, tmp_path: Path) -> None:
    bad = shutil.copytree(two_view_bundle, tmp_path / "bad")
    meta = json.loads((bad / "model.json").read_text())
    meta["decoder"]["concept_view"] = 1.5
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="concept_view"):
        load_bundle(bad)


def test_info_names_the_concept_view(two_view_bundle: Path, tiny_bundle: Path) -> None:
    from click.testing import CliRunner

    from capcli.cli import main

    shown = CliRunner().invoke(main, ["info", "--model", str(two_view_bundle)])
    assert shown.exit_code == 0 and "concept_view:" in shown.output and "0.4" in shown.output
    assert "concept_view" not in CliRunner().invoke(main, ["info", "--model", str(tiny_bundle)]).output


@pytest.mark.parametrize("gated", [True, False])
def test_the_tutorial_way_decodes_a_two_view_model_as_capcli_does(gated: bool) -> None:
    """``capcli bench --checkpoint``'s PyTorch loops take the tagger's concept and both views from model.encode."""
    from capcli import decode
    from capcli.bench.tutorial import _torch_beam, _torch_greedy
    from capcli.train.grounded import beam_captions

    vocab = tiny_vocab()
    model = make_tiny_model(vocab, **{**TWO_VIEW, "concept_view": 0.9})
    with torch.no_grad():
        model.decoder.view_gate.bias.fill_(10.0 if gated else -10.0)
    rules = decode.SearchSpec.runtime(vocab, model.config.max_len)
    images = torch.randn(4, 3, *model.config.image_size)  # (4, 3, H, W)
    with torch.no_grad():
        tutorial = [_torch_greedy(model, model.encode(x[None]), rules, 1) for x in images]
        encoded = model.encode(images)
        capcli = beam_captions(model.decoder, encoded.features, encoded.concept, vocab, rules)
        beams = [_torch_beam(model, model.encode(x[None]), rules, 3) for x in images]
    assert [[vocab.tokens[i] for i in ids] for ids in tutorial] == capcli
    assert all(ids and rules.end_id not in ids for ids in beams)
