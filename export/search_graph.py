"""The decode loop as one ONNX graph (``search.onnx``, ``search.int8.onnx``): a ``Loop`` over the decoder step.

One ``run()`` per batch captions it: the decoder step is inlined as the
loop body, followed by capcli's search, exactly as :mod:`capcli.decode`'s
beam search implements it (beam width 1 is its greedy search): banned
specials, no <end> before ``min_len`` words, only <end> after ``max_len``,
no <end> after a dangling word, n-gram blocking, no second time for a
word said once, the two-stage top-k (each
row's ``2K`` best words, then each image's ``2K`` best extensions, ties by
lower index as ``numpy.argmax``), <end> within the best K set aside, the
best finished hypothesis kept by its length-normalised score, the stopping
rule, and the best partial caption of an image that never ends.  Scores
accumulate in float64 as in numpy; the length normalisers come in as tables
the runtime computes with numpy's own expressions, so the ranking is
bit-for-bit the same.

Differences from the numpy loop that change no caption: every row of the
batch is computed until the last image is done (finished images do not
leave; each row is computed on its own, so the others' rows are unchanged),
and no attention maps come out (the numpy loop keeps those).

The weights are not copied: the body's initializers are *external data*
pointing at the byte ranges of the decoder file (``decoder.onnx`` or
``decoder.int8.onnx``) where the same tensors are stored, so a search graph
is a few tens of kB and the decoder file stays the one copy of the weights.

Inputs (B images): the encoder's context (features, keys[, concept]) and
initial state (h[, c]); ``beam`` (K), ``max_len``, ``min_len``, ``start_id``,
``end_id`` (int64 scalars); ``banned``, ``dangling`` and ``say_once`` (V,) bool masks;
``end_norm`` and ``partial_norm`` (max_len + 1,) float64, the divisors of a
hypothesis of t words that ends / that never ends at step t.  Outputs:
``ids`` (B, max_len + 1) int64, -1 after the caption; ``lengths`` (B,);
``scores`` (B,) float64, length-normalised; ``finished`` (B,) bool.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from capcli.bundle import FORMAT_VERSION, SEARCH_GRAPHS, sha256_bytes
from capcli.decode import NO_REPEAT_NGRAM
from capcli.decode import state_names as decoder_state_names

SEARCH_INPUTS = ("beam", "max_len", "min_len", "start_id", "end_id")  # int64 scalars
MASK_INPUTS = ("banned", "dangling", "say_once")  # (V,) bool
NORM_INPUTS = ("end_norm", "partial_norm")  # (max_len + 1,) float64
OUTPUTS = ("ids", "lengths", "scores", "finished")
EXTERNAL_MIN_BYTES = 1024  # smaller tensors stay inside the search graph
STEP = "step/"  # prefix of the inlined decoder's names in the loop body
NEG_INF = float("-inf")


class _Nodes:
    """A list of nodes with generated output names (``prefix`` + counter)."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.count = prefix, [], 0

    def __call__(self, op: str, *inputs: str, **attrs: object) -> str:
        """A node of one output; its name."""
        return self.multi(op, *inputs, outputs=1, **attrs)[0]

    def multi(self, op: str, *inputs: str, outputs: int, **attrs: object) -> list[str]:
        """A node of ``outputs`` outputs; their names."""
        names = [f"{self.prefix}{op}_{self.count}_{i}" for i in range(outputs)]
        self.count += 1
        self.nodes.append(helper.make_node(op, list(inputs), names, **attrs))
        return names

    def const(self, value: object, dtype: type | None = None) -> str:
        array = np.asarray(value, dtype=dtype)
        name = f"{self.prefix}const_{self.count}"
        self.count += 1
        self.nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name)))
        return name


def build_search_graph(
    decoder: onnx.ModelProto,
    decoder_bytes: bytes,
    decoder_file: str,
    state_names: Sequence[str],
    context_names: Sequence[str],
    no_repeat_ngram: int = NO_REPEAT_NGRAM,
) -> onnx.ModelProto:
    """The search graph over ``decoder`` (the decoder step, as stored in ``decoder_file`` = ``decoder_bytes``)."""
    vocab_size = decoder.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    main = _Nodes("")
    pre = _prepare(main, state_names)
    weights = _external_weights(decoder, decoder_bytes, decoder_file)
    body = _loop_body(decoder, weights, state_names, context_names, pre, no_repeat_ngram)
    carried = [pre["tokens"], *(pre[s] for s in state_names), *(pre[n] for n in _CARRIED)]
    finals = main.multi(
        "Loop", pre["trips"], pre["true"], *carried, outputs=len(carried), body=body
    )  # the carried values after the last step
    results = dict(zip(["tokens", *state_names, *_CARRIED], finals))
    for name, source in zip(OUTPUTS, ("best_ids", "best_len", "best_score", "best_fin")):
        main.nodes.append(helper.make_node("Identity", [results[source]], [name]))
    graph = helper.make_graph(
        main.nodes,
        "capcli_search",
        _main_inputs(decoder, state_names, context_names, vocab_size),
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "steps"]),
            helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("scores", TensorProto.DOUBLE, ["batch"]),
            helper.make_tensor_value_info("finished", TensorProto.BOOL, ["batch"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=list(decoder.opset_import), producer_name="capcli")
    model.ir_version = decoder.ir_version
    helper.set_model_props(model, {"capcli.no_repeat_ngram": str(no_repeat_ngram), "capcli.decoder": decoder_file})
    return model


# Loop-carried values after the decoder's (tokens, state): the search's own bookkeeping.
_CARRIED = ("scores", "hist", "active", "n_fin", "best_ids", "best_len", "best_score", "best_fin")


def _main_inputs(
    decoder: onnx.ModelProto, state_names: Sequence[str], context_names: Sequence[str], vocab_size: int
) -> list[onnx.ValueInfoProto]:
    by_name = {value.name: value for value in decoder.graph.input}
    per_image = []
    for name in [*context_names, *state_names]:
        value = onnx.ValueInfoProto()
        value.CopyFrom(by_name[name])
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_param = "batch"  # the state comes per image, as the encoder gives it
        per_image.append(value)
    return [
        *per_image,
        *(helper.make_tensor_value_info(n, TensorProto.INT64, []) for n in SEARCH_INPUTS),
        *(helper.make_tensor_value_info(n, TensorProto.BOOL, [vocab_size]) for n in MASK_INPUTS),
        *(helper.make_tensor_value_info(n, TensorProto.DOUBLE, ["steps"]) for n in NORM_INPUTS),
    ]


def _prepare(g: _Nodes, state_names: Sequence[str]) -> dict[str, str]:
    """The loop's constants (outer scope of the body) and the initial carried values."""
    v: dict[str, str] = {}
    zero, one = g.const(0, np.int64), g.const(1, np.int64)
    b = v["b"] = g("Gather", g("Shape", state_names[0]), zero, axis=0)  # B images
    v["n"] = g("Mul", b, "beam")  # N = B * K rows, image-major
    n_1d, b_1d, k_1d = (g("Unsqueeze", x, g.const([0], np.int64)) for x in (v["n"], b, "beam"))
    v["k2_1d"] = g("Mul", k_1d, g.const([2], np.int64))  # 2K: the top-k width of both stages
    v["k2"] = g("Mul", "beam", g.const(2, np.int64))
    width = g("Add", "max_len", one)  # history columns; step t writes column t
    v["trips"] = width  # steps 0 .. max_len
    v["true"] = g.const(True, np.bool_)
    v["nb_1d"] = g("Concat", n_1d, g.const([-1], np.int64), axis=0)  # reshape to (N, -1)
    v["bb_1d"] = g("Concat", b_1d, g.const([-1], np.int64), axis=0)  # reshape to (B, -1)
    v_size = g("Gather", g("Shape", "banned"), zero, axis=0)
    vocab = g("Range", zero, v_size, one)  # (V,)
    v["row_k"] = g("Min", v["k2"], v_size)  # a row's best words: 2K, or all of a smaller vocabulary
    v["row_k_1d"] = g("Unsqueeze", v["row_k"], g.const([0], np.int64))
    v["end_col"] = g("Equal", vocab, "end_id")  # (V,)
    v["ok"] = g("Not", "banned")  # (V,) what any step may produce
    v["ok_min"] = g("And", v["ok"], g("Not", v["end_col"]))  # before min_len words
    v["slots"] = g("Range", zero, "beam", one)  # (K,)
    v["slots_3d"] = g("Reshape", v["slots"], g.const([1, -1, 1], np.int64))  # (1, K, 1)
    v["positions"] = g("Range", zero, v["k2"], one)  # (2K,)
    v["first_rows"] = g("Unsqueeze", g("Mul", g("Range", zero, b, one), "beam"), g.const([1], np.int64))  # (B, 1)
    v["columns"] = g("Range", zero, width, one)  # (W,)
    v["neg_inf_f"] = g.const(NEG_INF, np.float32)
    v["neg_inf_d"] = g.const(NEG_INF, np.float64)
    # Initial carried values: K identical rows per image; only the first is live (score 0, the others -inf).
    v["tokens"] = g("Expand", "start_id", n_1d)  # (N,)
    bk1 = g("Concat", b_1d, k_1d, g.const([1], np.int64), axis=0)
    for s in state_names:
        v[s] = g("Reshape", g("Expand", g("Unsqueeze", s, g.const([1], np.int64)), bk1), v["nb_1d"])  # (N, H)
    bk = v["bk_1d"] = g("Concat", b_1d, k_1d, axis=0)
    first = g("Equal", v["slots"], zero)
    v["scores"] = g("Expand", g("Where", first, g.const(0.0, np.float64), v["neg_inf_d"]), bk)  # (B, K)
    minus_one = numpy_helper.from_array(np.array([-1], np.int64))
    v["hist"] = g(
        "ConstantOfShape", g("Concat", n_1d, g("Unsqueeze", width, g.const([0], np.int64)), axis=0), value=minus_one
    )
    v["best_ids"] = g(
        "ConstantOfShape", g("Concat", b_1d, g("Unsqueeze", width, g.const([0], np.int64)), axis=0), value=minus_one
    )
    v["active"] = g("ConstantOfShape", b_1d, value=numpy_helper.from_array(np.array([True])))
    v["best_fin"] = g("ConstantOfShape", b_1d, value=numpy_helper.from_array(np.array([False])))
    v["n_fin"] = g("ConstantOfShape", b_1d, value=numpy_helper.from_array(np.array([0], np.int64)))
    v["best_len"] = g("ConstantOfShape", b_1d, value=numpy_helper.from_array(np.array([0], np.int64)))
    v["best_score"] = g("ConstantOfShape", b_1d, value=numpy_helper.from_array(np.array([np.nan])))  # none yet
    return v


def _external_weights(decoder: onnx.ModelProto, data: bytes, file: str) -> list[onnx.TensorProto]:
    """The decoder's initializers, renamed for the body; the big ones as external data in ``file``.

    A tensor's raw bytes are a contiguous run of the serialised decoder, so any
    place where the same bytes occur holds the same tensor.
    """
    out = []
    for init in decoder.graph.initializer:
        tensor = TensorProto()
        tensor.CopyFrom(init)
        tensor.name = STEP + init.name
        if len(init.raw_data) >= EXTERNAL_MIN_BYTES:
            offset = data.find(init.raw_data)
            assert offset >= 0, init.name  # raw_data is serialised verbatim
            length = len(init.raw_data)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            for key, value in (("location", file), ("offset", str(offset)), ("length", str(length))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
        out.append(tensor)
    return out


def _inline_step(
    decoder: onnx.ModelProto, inputs: dict[str, str], state_names: Sequence[str]
) -> tuple[list[onnx.NodeProto], str, dict[str, str]]:
    """The decoder's nodes renamed for the loop body, each graph input read from ``inputs[name]``;
    (nodes, logprobs (n, V), new state)."""
    nodes = []
    for node in decoder.graph.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = STEP + node.name if node.name else ""
        for field in (copy.input, copy.output):
            for i, name in enumerate(field):
                if name in inputs:
                    field[i] = inputs[name]
                elif name:
                    field[i] = STEP + name
        nodes.append(copy)
    new_state = {s: STEP + f"{s}_out" for s in state_names}
    return nodes, STEP + "logprobs", new_state


def _loop_body(
    decoder: onnx.ModelProto,
    weights: list[onnx.TensorProto],
    state_names: Sequence[str],
    context_names: Sequence[str],
    o: dict[str, str],
    ngram: int,
) -> onnx.GraphProto:
    """One step: the decoder, the rules, the beams' extensions, the finished and partial hypotheses, the reorder."""
    g = _Nodes("body/")
    t, cond = "body/t", "body/cond"
    names = ["tokens", *state_names, *_CARRIED]
    inp = {name: f"body/in_{name}" for name in names}
    i0, i1 = g.const([0], np.int64), g.const([1], np.int64)
    logprobs, new_state = _decoder_rows(g, decoder, o, t, inp, state_names, context_names)
    masked = _apply_rules(g, o, t, logprobs, inp["tokens"], inp["hist"], ngram)  # (N, V) float32
    ext = _extensions(g, o, masked, inp["scores"], inp["active"])
    # Set aside the <end>s within the best K: count them; keep the best (normalised) when it beats the kept one.
    ended_count = g("ReduceSum", g("Cast", ext["ended"], to=TensorProto.INT64), i1, keepdims=0)  # (B,)
    n_fin = g("Add", inp["n_fin"], ended_count)
    end_norm = g("Gather", "end_norm", t)
    norm = g("Div", g("Where", ext["ended"], ext["scores"], o["neg_inf_d"]), end_norm)  # (B, 2K)
    first = g("ArgMax", norm, axis=1, keepdims=1)  # (B, 1) the first best <end>
    candidate = g("Squeeze", g("GatherElements", norm, first, axis=1), i1)  # (B,)
    better = g("Or", g("IsNaN", inp["best_score"]), g("Greater", candidate, inp["best_score"]))
    update = g("And", g("Greater", ended_count, g.const(0, np.int64)), better)  # (B,)
    ended_row = g("Squeeze", g("GatherElements", ext["src"], first, axis=1), i1)  # (B,)
    best = _replace_best(
        g,
        update,
        g("Gather", inp["hist"], ended_row, axis=0),
        t,
        candidate,
        [inp["best_ids"], inp["best_len"], inp["best_score"]],
    )
    best_fin = g("Or", inp["best_fin"], update)
    new_rows, new_tokens, new_scores, n_live = _next_rows(g, o, ext)
    # Done: no word lives on, or K finished and the best live one (normalised now) no longer beats the best.
    lead = g("Div", g("Squeeze", g("Slice", new_scores, i0, i1, i1), i1), end_norm)  # (B,)
    beaten = g("LessOrEqual", lead, best[2])  # False while there is no best (NaN)
    enough = g("GreaterOrEqual", n_fin, "beam")
    done = g("And", inp["active"], g("Or", g("Equal", n_live, g.const(0, np.int64)), g("And", enough, beaten)))
    # An image done without a finished hypothesis keeps its best partial one, as it was before this step.
    partial = g("And", done, g("IsNaN", best[2]))
    jj = g("ArgMax", inp["scores"], axis=1, keepdims=1)  # (B, 1)
    partial_row = g("Add", g("Squeeze", o["first_rows"], i1), g("Squeeze", jj, i1))  # (B,)
    partial_score = g(
        "Div", g("Squeeze", g("GatherElements", inp["scores"], jj, axis=1), i1), g("Gather", "partial_norm", t)
    )
    best = _replace_best(g, partial, g("Gather", inp["hist"], partial_row, axis=0), t, partial_score, best)
    active = g("And", inp["active"], g("Not", done))
    # The rows that live on, reordered by their back-pointers; this step's word written into column t.
    rows = g("Reshape", new_rows, g.const([-1], np.int64))  # (N,)
    tokens = g("Reshape", new_tokens, g.const([-1], np.int64))  # (N,)
    at_t = g("Equal", o["columns"], t)  # (W,)
    hist = g("Where", at_t, g("Unsqueeze", tokens, i1), g("Gather", inp["hist"], rows, axis=0))  # (N, W)
    states = [g("Gather", new_state[s], rows, axis=0) for s in state_names]  # (N, H) each
    go_on = g("Greater", g("ReduceSum", g("Cast", active, to=TensorProto.INT64), keepdims=0), g.const(0, np.int64))
    outs = dict(zip(names, [tokens, *states, new_scores, hist, active, n_fin, *best, best_fin]))
    g.nodes.append(helper.make_node("Identity", [go_on], ["body/cond_out"]))
    for name in names:
        g.nodes.append(helper.make_node("Identity", [outs[name]], [f"body/out_{name}"]))
    types = {
        "tokens": TensorProto.INT64,
        "scores": TensorProto.DOUBLE,
        "hist": TensorProto.INT64,
        "active": TensorProto.BOOL,
        "n_fin": TensorProto.INT64,
        "best_ids": TensorProto.INT64,
        "best_len": TensorProto.INT64,
        "best_score": TensorProto.DOUBLE,
        "best_fin": TensorProto.BOOL,
        **{s: TensorProto.FLOAT for s in state_names},
    }
    return helper.make_graph(
        g.nodes,
        "search_step",
        [
            helper.make_tensor_value_info(t, TensorProto.INT64, []),
            helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
            *(helper.make_tensor_value_info(inp[n], types[n], None) for n in names),
        ],
        [
            helper.make_tensor_value_info("body/cond_out", TensorProto.BOOL, []),
            *(helper.make_tensor_value_info(f"body/out_{n}", types[n], None) for n in names),
        ],
        initializer=weights,
    )


def _decoder_rows(
    g: _Nodes,
    decoder: onnx.ModelProto,
    o: dict[str, str],
    t: str,
    inp: dict[str, str],
    state_names: Sequence[str],
    context_names: Sequence[str],
) -> tuple[str, dict[str, str]]:
    """The decoder step over the rows the numpy loop computes; (logprobs (N, V), new state (N, H) each).

    Only the images still searching (as in the numpy loop, where the others leave the batch), and at
    step 0 only each image's first row, repeated after (decode._advance: its K rows are identical).
    The matrix products then have the numpy loop's shapes, hence its very bits.  The rows of finished
    images get some computed row's values, which nothing reads.
    """
    zero, one = g.const(0, np.int64), g.const(1, np.int64)
    spread = g("Where", g("Equal", t, zero), "beam", one)  # rows per computed row
    rows = g("Range", zero, o["n"], one)  # (N,)
    source = g("Sub", rows, g("Mod", rows, spread))  # (N,) the computed row each row copies
    active_rows = g(
        "Reshape",
        g("Expand", g("Unsqueeze", inp["active"], g.const([1], np.int64)), o["bk_1d"]),
        g.const([-1], np.int64),
    )
    computed = g("And", active_rows, g("Equal", rows, source))  # (N,)
    picked = g("Compress", rows, computed, axis=0)  # (n,)
    images = g("Compress", g("Range", zero, o["b"], one), inp["active"], axis=0)  # (m,)
    inputs = {"token": g("Gather", inp["tokens"], picked, axis=0)}
    inputs.update({s: g("Gather", inp[s], picked, axis=0) for s in state_names})
    inputs.update({c: g("Gather", c, images, axis=0) for c in context_names})
    nodes, logprobs, new_state = _inline_step(decoder, inputs, state_names)
    g.nodes.extend(nodes)
    rank = g("Sub", g("CumSum", g("Cast", computed, to=TensorProto.INT64), zero), one)  # (N,) index among the computed
    back = g("Max", g("Gather", rank, source, axis=0), zero)  # (N,) where each row's values are
    return g("Gather", logprobs, back, axis=0), {s: g("Gather", new_state[s], back, axis=0) for s in state_names}


def _apply_rules(g: _Nodes, o: dict[str, str], t: str, logprobs: str, tokens: str, hist: str, ngram: int) -> str:
    """decode.apply_rules: forbidden words of step ``t`` at -inf in ``logprobs`` (N, V)."""
    ok = _choose(g, g("Less", t, "min_len"), o["ok_min"], o["ok"])  # (V,)
    ok = _choose(g, g("GreaterOrEqual", t, "max_len"), o["end_col"], ok)
    masked = g("Where", ok, logprobs, o["neg_inf_f"])  # (N, V)
    # <end> may not follow a dangling word (the row's last word is the token it was fed), before max_len.
    inside = g("And", g("Greater", t, g.const(0, np.int64)), g("Less", t, "max_len"))
    dangling = g("Unsqueeze", g("And", g("Gather", "dangling", tokens, axis=0), inside), g.const([1], np.int64))
    words, blocked = g("Expand", "end_id", g("Shape", dangling)), dangling  # (N, 1) each
    if ngram > 0:
        repeated, repeating = _repeats(g, t, hist, ngram)
        words, blocked = g("Concat", words, repeated, axis=1), g("Concat", blocked, repeating, axis=1)
    # decode.block_said: each word of the row's history that is said once is blocked.
    said = g("Slice", hist, g.const([0], np.int64), g("Unsqueeze", t, g.const([0], np.int64)), g.const([1], np.int64))
    words, blocked = g("Concat", words, said, axis=1), g("Concat", blocked, g("Gather", "say_once", said), axis=1)
    # One pass over the row's few words: -inf added to the blocked ones, 0 (no change) to the others.
    penalty = g("Where", blocked, o["neg_inf_f"], g.const(0.0, np.float32))
    return g("ScatterElements", masked, words, penalty, axis=1, reduction="add")


def _choose(g: _Nodes, cond: str, yes: str, no: str) -> str:
    """Where(cond, yes, no) for bool tensors (onnxruntime's Where has no bool kernel)."""
    return g("Or", g("And", cond, yes), g("And", g("Not", cond), no))


def _repeats(g: _Nodes, t: str, hist: str, n: int) -> tuple[str, str]:
    """decode.block_repeats: (words (N, P), blocked (N, P)) at the ``P = t - n + 1`` start positions p
    of each row's history: word p+n-1 is blocked where words p .. p+n-2 equal the row's last n-1 words."""
    i1 = g.const([1], np.int64)
    zero = g.const(0, np.int64)
    positions = g("Max", g("Sub", t, g.const(n - 1, np.int64)), zero)  # P (0 until t >= n)
    match = None
    for i in range(n - 1):
        start = g.const([i], np.int64)
        window = g("Slice", hist, start, g("Add", start, positions), i1)  # (N, P) words p + i
        at = g(
            "Unsqueeze",
            g("Max", g("Add", g("Sub", t, g.const(n - 1, np.int64)), g.const(i, np.int64)), zero),
            g.const([0], np.int64),
        )
        tail = g("Slice", hist, at, g("Add", at, i1), i1)  # (N, 1) the last n-1 words, one at a time
        equal = g("Equal", window, tail)
        match = equal if match is None else g("And", match, equal)
    start = g.const([n - 1], np.int64)
    return g("Slice", hist, start, g("Add", start, positions), i1), match  # (N, P) the word after each window


def _extensions(g: _Nodes, o: dict[str, str], masked: str, scores: str, active: str) -> dict[str, str]:
    """decode._extensions: each image's 2K best extensions, best first, ties by (row, word) like numpy."""
    i1 = g.const([1], np.int64)
    row_logprobs, row_words = g.multi("TopK", masked, o["row_k_1d"], axis=1, largest=1, sorted=1, outputs=2)  # (N, 2K)
    row_scores = g("Reshape", scores, g.const([-1, 1], np.int64))  # (N, 1)
    cand = g("Reshape", g("Add", row_scores, g("Cast", row_logprobs, to=TensorProto.DOUBLE)), o["bb_1d"])  # (B, K*2K)
    values, pick = g.multi("TopK", cand, o["k2_1d"], axis=1, largest=1, sorted=1, outputs=2)  # (B, 2K)
    valid = g("Not", g("IsInf", values))  # -inf sorts last: a prefix of each row
    src = g("Add", o["first_rows"], g("Div", pick, o["row_k"]))  # (B, 2K) the row each extends
    word = g("GatherElements", g("Reshape", row_words, o["bb_1d"]), pick, axis=1)  # (B, 2K)
    is_end = g("And", valid, g("Equal", word, "end_id"))
    in_k = g("Less", o["positions"], "beam")  # (2K,) an <end> outside the best K is not taken
    ended = g("And", g("And", is_end, in_k), g("Unsqueeze", active, i1))  # done images set nothing aside
    is_word = g("And", valid, g("Not", is_end))
    slot = g("Sub", g("CumSum", g("Cast", is_word, to=TensorProto.INT64), g.const(1, np.int64)), g.const(1, np.int64))
    live = g("And", is_word, g("Less", slot, "beam"))
    return {"src": src, "word": word, "scores": values, "ended": ended, "live": live, "slot": slot}


def _next_rows(g: _Nodes, o: dict[str, str], ext: dict[str, str]) -> tuple[str, str, str, str]:
    """decode._next_rows: (back-pointers (B, K), tokens (B, K), scores (B, K), live words per image (B,)).

    Slot s of an image takes its live extension of slot s; a slot left empty copies the image's
    first row, at -inf, fed <end>.
    """
    i1 = g.const([1], np.int64)
    fits = g(
        "And", g("Unsqueeze", ext["live"], i1), g("Equal", g("Unsqueeze", ext["slot"], i1), o["slots_3d"])
    )  # (B, K, 2K)
    fits_f = g("Cast", fits, to=TensorProto.FLOAT)
    has = g("Greater", g("ReduceMax", fits_f, axes=[2], keepdims=0), g.const(0.0, np.float32))  # (B, K)
    which = g("ArgMax", fits_f, axis=2, keepdims=0)  # (B, K) the extension of each slot
    rows = g("Where", has, g("GatherElements", ext["src"], which, axis=1), o["first_rows"])
    tokens = g("Where", has, g("GatherElements", ext["word"], which, axis=1), "end_id")
    scores = g("Where", has, g("GatherElements", ext["scores"], which, axis=1), o["neg_inf_d"])
    n_live = g("ReduceSum", g("Cast", ext["live"], to=TensorProto.INT64), i1, keepdims=0)  # (B,)
    return rows, tokens, scores, n_live


def _replace_best(g: _Nodes, where: str, ids: str, t: str, score: str, best: list[str]) -> list[str]:
    """(best_ids, best_len, best_score) with the images of ``where`` (B,) given ``ids`` (B, W), t words, ``score``."""
    ids_ = g("Where", g("Unsqueeze", where, g.const([1], np.int64)), ids, best[0])
    length = g("Where", where, t, best[1])
    return [ids_, length, g("Where", where, score, best[2])]


def add_search_graphs(folder: Path, meta: dict[str, Any]) -> None:
    """Write a search graph over each decoder of the bundle being written in ``folder`` (model.json ``meta``,
    updated here: the graphs' files and sha256, what each was made from, format 4)."""
    state_names = decoder_state_names(meta["decoder"]["kind"], bool(meta["decoder"].get("concept_view")))
    context_names = ["features", "keys", *(["concept"] if meta.get("concept", {}).get("dim") else [])]
    search = meta.setdefault("search", {})
    for decoder_file, name in SEARCH_GRAPHS.items():
        if decoder_file not in meta["files"]:
            continue
        data = (folder / decoder_file).read_bytes()
        model = build_search_graph(onnx.load_from_string(data), data, decoder_file, state_names, context_names)
        onnx.save(model, str(folder / name))
        onnx.checker.check_model(str(folder / name))
        meta["files"][name] = {"sha256": sha256_bytes((folder / name).read_bytes())}
        search[name] = {
            "decoder": decoder_file,
            "decoder_sha256": sha256_bytes(data),
            "no_repeat_ngram": NO_REPEAT_NGRAM,
            "say_once": True,  # takes the say_once mask (graphs before it had no such input)
        }
    meta["format_version"] = FORMAT_VERSION
