"""The search graph (capcli.export.search_graph) against the numpy search (capcli.decode): the same captions,
token for token, with the same scores, bit for bit.

Hand-made decoders (lookup tables with many exact ties, an <end> that cannot come: partial captions) test
the rules and the tie-breaking; the tiny exported bundles test the real decoder steps, GRU and LSTM.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="building a search graph needs the train extra")
import onnx
import onnxruntime as ort
from capcli.export.search_graph import build_search_graph
from onnx import TensorProto, helper, numpy_helper

from capcli.bundle import DECODER, SEARCH_GRAPHS
from capcli.decode import SearchSpec, beam_search, greedy
from capcli.errors import FatalError
from capcli.graph_search import hypotheses, search_feeds, search_session

V = 9  # 4 specials + 5 words
SPEC = SearchSpec(
    1, 2, (0, 1, 3), max_len=7, length_penalty=0.7, no_repeat_ngram=3, no_end_after=(4, 5), say_once=(6, 8)
)


def table_decoder(seed: int, end_allowed: bool = True, end_score: float | None = None) -> onnx.ModelProto:
    """A decoder step whose word scores depend on the token and on the state it carries:
    logprobs = step[token] + h, h_out = h / 2 + carry[token] (h is (N, V)).  The values are small
    multiples of 1/4, so many scores tie exactly."""
    rng = np.random.default_rng(seed)
    step = -rng.integers(0, 6, size=(V, V)).astype(np.float32) / 2  # (V, V)
    carry = -rng.integers(0, 3, size=(V, V)).astype(np.float32) / 4
    if not end_allowed:
        step[:, 2] = -np.inf
    elif end_score is not None:
        step[:, 2] = end_score
    nodes = [
        helper.make_node("Gather", ["step", "token"], ["scores"], axis=0),
        helper.make_node("Add", ["scores", "h"], ["logprobs"]),
        helper.make_node("Mul", ["h", "half"], ["halved"]),
        helper.make_node("Gather", ["carry", "token"], ["carried"], axis=0),
        helper.make_node("Add", ["halved", "carried"], ["h_out"]),
        helper.make_node("Identity", ["h"], ["alpha"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "table_step",
        [
            helper.make_tensor_value_info("token", TensorProto.INT64, ["rows"]),
            helper.make_tensor_value_info("h", f, ["rows", V]),
            helper.make_tensor_value_info("features", f, ["batch", 2, 3]),
            helper.make_tensor_value_info("keys", f, ["batch", 3, 2]),
        ],
        [helper.make_tensor_value_info(n, f, ["rows", V]) for n in ("logprobs", "h_out", "alpha")],
        [
            numpy_helper.from_array(step, "step"),
            numpy_helper.from_array(carry, "carry"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def run_both(tmp_path: Path, decoder: onnx.ModelProto, h: np.ndarray, spec: SearchSpec, beam: int):
    """(numpy hypotheses, graph hypotheses) for the images whose initial state is ``h`` (B, V)."""
    data = decoder.SerializeToString()
    (tmp_path / "decoder.onnx").write_bytes(data)
    graph = build_search_graph(decoder, data, "decoder.onnx", ["h"], ["features", "keys"])
    session = search_session(graph.SerializeToString(), tmp_path, ort.SessionOptions(), ["CPUExecutionProvider"])
    step_session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    features, keys = np.zeros((len(h), 2, 3), np.float32), np.zeros((len(h), 3, 2), np.float32)

    def step(tokens, state, images):
        logprobs, h_out, alpha = step_session.run(
            None, {"token": tokens, "h": state["h"], "features": features[images], "keys": keys[images]}
        )
        return logprobs, {"h": h_out}, alpha

    ref = greedy(step, {"h": h}, spec) if beam == 1 else beam_search(step, {"h": h}, spec, beam=beam)
    feeds = {"features": features, "keys": keys, "h": h, **search_feeds(spec, beam, V)}
    ids, lengths, scores, finished = session.run(None, feeds)
    got = hypotheses(ids, scores, finished)
    assert lengths.tolist() == [len(g.ids) for g in got]
    return ref, got


def assert_same(ref, got) -> None:
    assert [r.ids for r in ref] == [g.ids for g in got]
    assert [r.score for r in ref] == [g.score for g in got]  # the very same float64
    assert [r.finished for r in ref] == [g.finished for g in got]


@pytest.mark.parametrize("beam", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(6))
def test_graph_equals_numpy_on_tied_tables(tmp_path: Path, seed: int, beam: int) -> None:
    h = -np.random.default_rng(100 + seed).integers(0, 3, size=(5, V)).astype(np.float32) / 4  # (B, V)
    ref, got = run_both(tmp_path, table_decoder(seed), h, SPEC, beam)
    assert_same(ref, got)


@pytest.mark.parametrize("beam", [1, 3])
def test_graph_returns_the_best_partial_caption_when_none_can_end(tmp_path: Path, beam: int) -> None:
    h = np.zeros((3, V), np.float32)
    ref, got = run_both(tmp_path, table_decoder(7, end_allowed=False), h, SPEC, beam)
    assert_same(ref, got)
    assert not any(g.finished for g in got) and all(len(g.ids) == SPEC.max_len for g in got)


@pytest.mark.parametrize("beam", [1, 3])
def test_graph_follows_the_spec_options(tmp_path: Path, beam: int) -> None:
    """Other max_len, min_len, length penalty, no dangling words, another n-gram rule off: the feeds carry them."""
    h = np.zeros((4, V), np.float32)
    for spec in (
        replace(SPEC, max_len=3, length_penalty=0.0),
        replace(SPEC, no_end_after=(), length_penalty=1.3),
        replace(SPEC, min_len=3),
        replace(SPEC, say_once=()),
        replace(SPEC, say_once=(4, 5, 6, 7)),
    ):
        ref, got = run_both(tmp_path, table_decoder(3), h, spec, beam)
        assert_same(ref, got)


@pytest.mark.parametrize("beam", [1, 3])
def test_graph_scores_long_captions_as_numpy(tmp_path: Path, beam: int) -> None:
    """Captions of 12, 14 and 16 words (+ <end>): numpy's power and Python's differ in the last bit at
    lengths 13, 15 and 17, and greedy search divides by the one, beam search by the other."""
    h = np.zeros((3, V), np.float32)
    for max_len in (12, 14, 16):
        spec = replace(SPEC, max_len=max_len)
        ref, got = run_both(tmp_path, table_decoder(2, end_score=-40.0), h, spec, beam)
        assert_same(ref, got)
        assert all(len(g.ids) == max_len and g.finished for g in got)


@pytest.fixture(scope="module", params=["gru", "lstm"])
def searchable_bundle(request, tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> Path:
    """The tiny bundles, with their search graphs (an LSTM bundle exported for this module)."""
    if request.param == "gru":
        return tiny_bundle
    from tiny_bundle import make_tiny_bundle

    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny-lstm", decoder="lstm")


@pytest.mark.parametrize("beam", [1, 3])
def test_graph_equals_numpy_on_the_tiny_models(searchable_bundle: Path, beam: int) -> None:
    from capcli.bundle import load_bundle
    from capcli.runtime import Captioner

    bundle = load_bundle(searchable_bundle)
    images = np.random.default_rng(0).standard_normal((9, 3, *bundle.preprocess.size)).astype(np.float32)
    numpy_ = Captioner(bundle, device="cpu", beam=beam, search="numpy").caption(images)
    graph = Captioner(bundle, device="cpu", beam=beam, search="graph").caption(images)
    assert [c.tokens for c in numpy_] == [c.tokens for c in graph]
    assert [c.score for c in numpy_] == [c.score for c in graph]
    assert all(c.alphas is None for c in graph) and all(c.alphas is not None for c in numpy_)


def _as_format_3(bundle: Path, folder: Path) -> Path:
    """A copy of ``bundle`` as capcli wrote it before search graphs: format 3, no search files."""
    import json

    shutil.copytree(bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    for name in SEARCH_GRAPHS.values():
        meta["files"].pop(name, None)
        (folder / name).unlink(missing_ok=True)
    del meta["search"]
    meta["format_version"] = 3
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_upgrade_adds_the_search_graphs_to_a_format_3_bundle(tmp_path: Path, tiny_bundle: Path) -> None:
    from click.testing import CliRunner

    from capcli.bundle import FORMAT_VERSION, load_bundle
    from capcli.cli import main
    from capcli.runtime import Captioner

    old = load_bundle(_as_format_3(tiny_bundle, tmp_path / "old"))  # still loads, and captions by numpy
    assert old.search_graph(DECODER) is None and Captioner(old, device="cpu").search == "numpy"
    with pytest.raises(FatalError, match="no search graph"):
        Captioner(old, device="cpu", search="graph")
    result = CliRunner().invoke(main, ["export", str(old.path), "-o", str(tmp_path / "new"), "--upgrade"])
    assert result.exit_code == 0, result.output
    assert "search graphs written" in result.output and "float beam 3 repeats allowed: 3/3" in result.output
    new = load_bundle(tmp_path / "new")
    assert new.meta["format_version"] == FORMAT_VERSION and new.search_graph(DECODER) == SEARCH_GRAPHS[DECODER]
    assert (tmp_path / "new" / DECODER).read_bytes() == (tmp_path / "old" / DECODER).read_bytes()
    checks = new.provenance["upgrade"]["search_parity"]["checks"]
    assert [(c["beam"], c["no_repeated_words"], c["same"]) for c in checks] == [
        (1, True, 3),
        (3, True, 3),
        (3, False, 3),
    ]
    assert (tmp_path / "new" / SEARCH_GRAPHS[DECODER]).stat().st_size < 100_000  # the weights stay in decoder.onnx


def test_a_graph_made_from_other_decoder_bytes_is_not_used(tmp_path: Path, tiny_bundle: Path) -> None:
    import json

    from capcli.bundle import load_bundle

    folder = tmp_path / "stale"
    shutil.copytree(tiny_bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    meta["search"][SEARCH_GRAPHS[DECODER]]["decoder_sha256"] = "0" * 64
    (folder / "model.json").write_text(json.dumps(meta))
    assert load_bundle(folder).search_graph(DECODER) is None


def test_options_the_graph_does_not_implement_keep_the_numpy_search(tiny_bundle: Path) -> None:
    from capcli.bundle import load_bundle
    from capcli.decode import Decoding
    from capcli.runtime import Captioner

    bundle = load_bundle(tiny_bundle)
    assert Captioner(bundle, device="cpu", search="graph").search == "graph"
    assert Captioner(bundle, device="cpu", search="numpy").search == "numpy"
    prefixed = Decoding(3, prefix="a")
    assert Captioner(bundle, device="cpu", decoding=prefixed).search == "numpy"
    with pytest.raises(FatalError, match="need the numpy search"):
        Captioner(bundle, device="cpu", decoding=prefixed, search="graph")


def _before_say_once(bundle: Path, folder: Path) -> Path:
    """A copy of ``bundle`` whose search graphs are as capcli wrote them before the rule of words said once:
    no say_once input (here an all-False constant in its place), model.json's entries without "say_once"."""
    import json

    from capcli.bundle import sha256_bytes

    shutil.copytree(bundle, folder)
    meta = json.loads((folder / "model.json").read_text())
    for graph in SEARCH_GRAPHS.values():
        if graph not in meta["files"]:
            continue
        model = onnx.load(str(folder / graph), load_external_data=False)
        mask = next(i for i in model.graph.input if i.name == "say_once")
        size = mask.type.tensor_type.shape.dim[0].dim_value
        model.graph.input.remove(mask)
        none = numpy_helper.from_array(np.zeros(size, dtype=bool), "say_once")
        model.graph.node.insert(0, helper.make_node("Constant", [], ["say_once"], value=none))
        onnx.save(model, str(folder / graph))
        meta["files"][graph]["sha256"] = sha256_bytes((folder / graph).read_bytes())
        del meta["search"][graph]["say_once"]
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


def test_a_graph_from_before_the_rule_of_words_said_once(tmp_path: Path, tiny_bundle: Path) -> None:
    """It serves --repeated-words; under the default rule auto keeps numpy and --search graph says why;
    --upgrade remakes it."""
    from click.testing import CliRunner

    from capcli.bundle import load_bundle
    from capcli.cli import main
    from capcli.decode import Decoding
    from capcli.runtime import Captioner

    old = load_bundle(_before_say_once(tiny_bundle, tmp_path / "old"))
    images = np.random.default_rng(1).standard_normal((4, 3, *old.preprocess.size)).astype(np.float32)
    repeats = Decoding(no_repeated_words=False)
    graph = Captioner(old, device="cpu", decoding=repeats, search="graph")
    numpy_ = Captioner(old, device="cpu", decoding=repeats, search="numpy")
    assert [c.tokens for c in graph.caption(images)] == [c.tokens for c in numpy_.caption(images)]
    once = Decoding()  # the default: no word said twice
    assert once.no_repeated_words and Captioner(old, device="cpu", decoding=once).search == "numpy"
    with pytest.raises(FatalError, match="predates the rule of words said once.*--upgrade"):
        Captioner(old, device="cpu", search="graph")
    result = CliRunner().invoke(main, ["export", str(old.path), "-o", str(tmp_path / "new"), "--upgrade"])
    assert result.exit_code == 0, result.output
    new = load_bundle(tmp_path / "new")
    assert new.meta["search"][SEARCH_GRAPHS[DECODER]]["say_once"] is True
    said = Captioner(new, device="cpu", decoding=once, search="graph").caption(images)
    by_numpy = Captioner(new, device="cpu", decoding=once, search="numpy").caption(images)
    assert [(c.tokens, c.score) for c in said] == [(c.tokens, c.score) for c in by_numpy]


def test_caption_search_option_gives_the_same_records(tmp_path: Path, tiny_bundle: Path, photos: Path) -> None:
    """capcli caption --search graph writes the records --search numpy writes; --attention-dir keeps numpy."""
    import json

    from click.testing import CliRunner

    from capcli.cli import main

    records = {}
    for mode in ("numpy", "graph"):
        out = tmp_path / f"{mode}.jsonl"
        args = [
            "caption",
            str(photos),
            "--model",
            str(tiny_bundle),
            "--device",
            "cpu",
            "--search",
            mode,
            "-o",
            str(out),
        ]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        records[mode] = [{k: r[k] for k in ("source", "caption", "score")} for r in map(json.loads, out.open())]
    assert records["graph"] == records["numpy"] and len(records["numpy"]) == 5
    figures = tmp_path / "figures"
    args = ["caption", str(photos), "--model", str(tiny_bundle), "--device", "cpu", "--search", "graph"]
    result = CliRunner().invoke(main, [*args, "--attention-dir", str(figures), "-o", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    assert len(list(figures.iterdir())) == 5


def test_bench_search_both_interleaves_the_graph_scenarios() -> None:
    from capcli.bench.scenarios import BenchConfig, Result, ratios, scenarios

    found = {s.key: s.search for s in scenarios(BenchConfig(None, Path("."), big=False, search="both"))}
    assert found["beam3"] == found["greedy"] == "numpy" and found["beam3_graph"] == found["greedy_graph"] == "graph"
    rates = {"beam3": 10.0, "beam3_graph": 12.0}
    results = {key: Result(key, key, images_per_s=rate) for key, rate in rates.items()}
    assert [r.value for r in ratios(results) if r.name == "capcli beam 3: search graph / numpy"] == [1.2]


def test_info_names_the_search_graphs_and_the_search_in_use(tiny_bundle: Path) -> None:
    import json

    from click.testing import CliRunner

    from capcli.cli import main

    result = CliRunner().invoke(main, ["info", "--model", str(tiny_bundle), "--device", "cpu", "--json"])
    facts = json.loads(result.output)
    assert facts["search_graphs"] == ["search.onnx"] and facts["search"] == "numpy"  # auto: numpy on the CPU


def test_cancel_stops_a_search_graph_run(tiny_bundle: Path) -> None:
    """Captioner.cancel() reaches the graph's run too (a second Ctrl-C)."""
    from capcli.bundle import load_bundle
    from capcli.runtime import Captioner

    bundle = load_bundle(tiny_bundle)
    captioner = Captioner(bundle, device="cpu", search="graph")
    images = np.zeros((2, 3, *bundle.preprocess.size), np.float32)
    encoded = captioner.encode(images)
    captioner.cancel()
    with pytest.raises(Exception, match="(?i)terminat"):
        captioner._graph_search(encoded)
