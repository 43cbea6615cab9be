"""Bundle -> bundle with an int8 decoder (``capcli export --quantize``), by onnxruntime's dynamic quantisation.

The output is the source bundle plus ``decoder.int8.onnx``: the decoder step
with int8 weights for every matrix product with a weight matrix (GRU/LSTM
gates, attention query, context gate, output layer), its activations
quantised on the fly at each call, each row (one hypothesis of one image)
with its own scale and zero point.  The runtime prefers it on the CPU, where
those products are most of a step; CUDA keeps the float decoder.  Products
with a vector weight (the attention score, ``w @ tanh(...)``) stay float:
quantising their large input costs more than it saves.  The encoder
stays float: its convolutions dominate it, and static int8 convolutions (QDQ
or QOperator, per channel, 32 calibration photos) were no faster on an AVX2
CPU and moved the region features by ~70% of their size.

Activations per row: onnxruntime's ``DynamicQuantizeLinear`` takes one
scale for the whole input, so a row's numbers (and at times its caption)
depended on the other images of its batch (a score -0.2717 in a batch of 16,
-0.2697 alone).  :func:`per_row_activations` replaces each such node with
the same arithmetic per row (min/max per row, ``QuantizeLinear`` along the
rows) and takes the row's zero point out of the integer product with the
weights' column sums, since ``MatMulInteger`` accepts only one zero point
for its left input.  A step costs about 15-25% more than with one scale
(still about 40% less than float), and the int8 results move less from the
float ones.

Weights are signed 8-bit per output channel with ``reduce_range`` (7 bits):
on CPUs without VNNI, onnxruntime's u8 x s8 kernels sum pairs of products in
16 bits, which full-range weights overflow (log-probabilities then moved by
0.58 instead of 0.1 on a trained Flickr8k model).

model.json lists the new file with its sha256 and records, under
``provenance.quantization``, what was done and how far it moved the outputs
(float vs int8 decoder on a few photos: greedy caption agreement and largest
log-probability difference).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from capcli.export import _training_photos
from capcli.export.onnx_export import _prepare_target, write_meta
from capcli.export.parity import check_pixels
from capcli.export.search_graph import add_search_graphs

from capcli.atomic import move_into_place, temp_dir_beside
from capcli.bundle import DECODER, ENCODER, INT8_DECODER, load_bundle, sha256_bytes

OP_TYPES = ["MatMul", "Gemm"]
ACTIVATION_SCALE = "per-row"  # provenance.quantization.activation_scale; the runtime's auto precision needs it
COMPARE_IMAGES = 16


def quantize_bundle(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Write the bundle at ``source`` plus its int8 decoder to ``out_dir``, atomically.

    ``images``: photos or folders to compare the two decoders on (up to 16
    images); by default the training photos the bundle's provenance names,
    else random inputs.
    """
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = load_bundle(source)  # validated before anything is written
    target = Path(out_dir)
    _prepare_target(target, overwrite)
    settings = {
        "method": "dynamic",
        "op_types": OP_TYPES,
        "weight_type": "QInt8",
        "activation_type": "QUInt8",
        "per_channel": True,
        "reduce_range": True,
        "activation_scale": ACTIVATION_SCALE,
        "tool": f"onnxruntime {onnxruntime.__version__} quantize_dynamic",
    }
    with temp_dir_beside(target) as tmp:
        for name in (ENCODER, DECODER, *src.data_files):
            (tmp / name).write_bytes(src.files[name])
        quantize_dynamic(
            tmp / DECODER,
            tmp / INT8_DECODER,
            op_types_to_quantize=OP_TYPES,
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_vector_products(tmp / DECODER),
        )
        per_row_activations(tmp / INT8_DECODER)
        meta = copy.deepcopy(src.meta)
        meta["files"][INT8_DECODER] = {"sha256": sha256_bytes((tmp / INT8_DECODER).read_bytes())}
        add_search_graphs(tmp, meta)  # one over each decoder
        provenance = meta.setdefault("provenance", {})
        provenance["quantization"] = {
            **settings,
            "file": INT8_DECODER,
            "source": {"path": str(src.path), DECODER: src.meta["files"][DECODER]["sha256"]},
            **({"command": command} if command else {}),
        }
        write_meta(tmp, meta)
        photos = list(images) or _training_photos({"provenance": src.provenance, "train": src.provenance.get("train")})
        provenance["quantization"]["comparison"] = compare_decoders(tmp, photos)
        write_meta(tmp, meta)
        move_into_place(tmp, target)
    return target


def per_row_activations(path: Path) -> int:
    """Rewrite the int8 decoder at ``path`` so that each row of an activation is quantised on its own.

    Every ``DynamicQuantizeLinear`` (one uint8 scale and zero point for the whole (rows, K) input)
    becomes, per row r: ``lo = min(0, min x_r)``, ``hi = max(0, max x_r)``, ``s_r = (hi - lo) / 255``,
    ``z_r = clip(round(-lo / s_r), 0, 255)``, ``q_r = QuantizeLinear(x_r, s_r, z_r)`` -- the same rule
    per row.  Its ``MatMulInteger`` products lose their left zero point (it must be one number) and get
    ``- z_r * colsum(W - w_zero)`` instead; the scale products downstream broadcast s_r (rows, 1)
    against the weights' scales (N,) as they are.  Returns how many nodes were replaced.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    inits = {init.name: init for init in graph.initializer}
    extra = [
        numpy_helper.from_array(np.array(v, np.float32), name)
        for name, v in (("rowq_zero", 0.0), ("rowq_255", 255.0), ("rowq_tiny", np.finfo(np.float32).tiny))
    ]
    extra += [
        numpy_helper.from_array(np.array([-1], np.int64), "rowq_flat"),
        numpy_helper.from_array(np.array([-1], np.int64), "rowq_last_axis"),
    ]

    def reduce(op: str, x: str, out: str) -> Any:  # over the last axis, kept: (rows, 1)
        if opset >= 18:
            return helper.make_node(op, [x, "rowq_last_axis"], [out], keepdims=1)
        return helper.make_node(op, [x], [out], axes=[-1], keepdims=1)

    zero_points: dict[str, str] = {}  # quantised activation -> its per-row zero point as int32 (rows, 1)
    nodes: list[Any] = []
    for node in graph.node:
        if node.op_type == "DynamicQuantizeLinear":
            x, (q, scale, zp) = node.input[0], node.output
            p = f"{x}_rowq_"
            nodes += [
                reduce("ReduceMin", x, p + "min"),
                reduce("ReduceMax", x, p + "max"),
                helper.make_node("Min", [p + "min", "rowq_zero"], [p + "lo"]),
                helper.make_node("Max", [p + "max", "rowq_zero"], [p + "hi"]),
                helper.make_node("Sub", [p + "hi", p + "lo"], [p + "range"]),
                helper.make_node("Div", [p + "range", "rowq_255"], [p + "s"]),
                helper.make_node("Max", [p + "s", "rowq_tiny"], [scale]),  # an all-zero row: q = 0, not NaN
                helper.make_node("Div", [p + "lo", scale], [p + "lo_s"]),
                helper.make_node("Neg", [p + "lo_s"], [p + "z"]),
                helper.make_node("Round", [p + "z"], [p + "z_round"]),
                helper.make_node("Clip", [p + "z_round", "rowq_zero", "rowq_255"], [p + "z_clip"]),
                helper.make_node("Cast", [p + "z_clip"], [zp], to=TensorProto.UINT8),
                helper.make_node("Reshape", [scale, "rowq_flat"], [p + "scale_rows"]),
                helper.make_node("Reshape", [zp, "rowq_flat"], [p + "zp_rows"]),
                helper.make_node("QuantizeLinear", [x, p + "scale_rows", p + "zp_rows"], [q], axis=0),
                helper.make_node("Cast", [zp], [p + "zp_int32"], to=TensorProto.INT32),
            ]
            zero_points[q] = p + "zp_int32"
        elif node.op_type == "MatMulInteger" and node.input[0] in zero_points:
            weight, w_zero = node.input[1], node.input[3]
            w = numpy_helper.to_array(inits[weight]).astype(np.int64)
            wz = numpy_helper.to_array(inits[w_zero]).astype(np.int64) if w_zero else np.zeros(w.shape[1], np.int64)
            colsum = (w - wz[None, :]).sum(axis=0, keepdims=True).astype(np.int32)  # (1, N)
            extra.append(numpy_helper.from_array(colsum, f"{weight}_colsum"))
            out = node.output[0]
            node.input[2] = ""  # no left zero point
            node.output[0] = f"{out}_uncorrected"
            nodes += [
                node,
                helper.make_node("Mul", [zero_points[node.input[0]], f"{weight}_colsum"], [f"{out}_zp"]),
                helper.make_node("Sub", [f"{out}_uncorrected", f"{out}_zp"], [out]),
            ]
        else:
            nodes.append(node)
    replaced = len(zero_points)
    if not replaced:
        return 0
    for x in {n.input[0] for n in graph.node if n.op_type == "DynamicQuantizeLinear"}:
        rank = _rank(model, x)
        if rank not in (None, 2):
            raise ValueError(f"per-row quantisation expects (rows, K) activations; {x} has rank {rank}")
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(extra)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return replaced


def _rank(model: Any, name: str) -> int | None:
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    for value in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if value.name == name and value.type.tensor_type.HasField("shape"):
            return len(value.type.tensor_type.shape.dim)
    return None


def _vector_products(path: Path) -> list[str]:
    """MatMul nodes whose weight is a vector (a single row or column): left in float.

    The attention score is ``w (1, A) @ tanh(...)``; the quantiser only
    quantises weights on the right, so it stays float anyway, but a decoder
    written as ``tanh(...) @ w (A, 1)`` would otherwise get a slower int8 product.
    """
    import onnx

    model = onnx.load(str(path))
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:  # weights may also come as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            shapes[node.output[0]] = list(node.attribute[0].t.dims)
    return [
        n.name for n in model.graph.node if n.op_type == "MatMul" and any(1 in shapes.get(i, [])[-2:] for i in n.input)
    ]


def compare_decoders(bundle: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    """How far the bundle's int8 decoder moves the float one's outputs: greedy captions and first-step numbers."""
    from capcli.runtime import Captioner

    both = load_bundle(bundle)
    ref = Captioner(both, device="cpu", beam=1, lanes=1, precision="float")
    new = Captioner(both, device="cpu", beam=1, lanes=1, precision="int8")
    return compare_captioners(ref, new, images)[0]


def compare_captioners(
    ref: Any, new: Any, images: Sequence[str | os.PathLike[str]] = ()
) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
    """Greedy captions and first-step log-probabilities of two greedy CPU captioners over the same photos (up to
    16 of ``images``, else random inputs); also each one's encoder outputs."""
    bundle = ref.bundle
    pixels, inputs = check_pixels(images, bundle.preprocess, COMPARE_IMAGES, 4)
    first = ref.encode(pixels)
    same_encoder = new.bundle.files[ENCODER] == bundle.files[ENCODER]  # e.g. float vs int8 decoder of one bundle
    encoded = [first, first if same_encoder else new.encode(pixels)]
    start = np.full(len(pixels), bundle.vocab.start_id, dtype=np.int64)
    steps = [
        c.step(start, {n: e[n] for n in bundle.state_names}, c.bind_context(e))[0] for c, e in zip((ref, new), encoded)
    ]
    same = sum(x.text == y.text for x, y in zip(ref.caption(pixels), new.caption(pixels)))
    comparison = {
        "inputs": inputs,
        "greedy_captions_identical": round(same / len(pixels), 4),
        "first_step_logprobs_max_abs_diff": float(np.abs(steps[0] - steps[1]).max()),
    }
    return comparison, encoded
