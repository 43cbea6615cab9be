"""Bundle -> bundle with an int8 decoder (``capcli export --quantize``), by onnxruntime's dynamic quantisation.

The output is the source bundle plus ``decoder.int8.onnx``: the decoder step
with int8 weights for every matrix product with a weight matrix (GRU/LSTM
gates, attention query, context gate, output layer), its activations
quantised on the fly at each call.  The runtime prefers it on the CPU, where
those products are most of a step; CUDA keeps the float decoder.  Products
with a vector weight (the attention score, ``w @ tanh(...)``) stay float:
quantising their large input costs more than it saves.  The encoder
stays float: its convolutions dominate it, and static int8 convolutions (QDQ
or QOperator, per channel, 32 calibration photos) were no faster on an AVX2
CPU and moved the region features by ~70% of their size.

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

from capcli.bundle import DECODER, ENCODER, INT8_DECODER, load_bundle, sha256_bytes
from export import _training_photos
from export.onnx_export import _check_target, _move_into_place, _temp_dir_beside, write_meta
from export.parity import check_pixels

OP_TYPES = ["MatMul", "Gemm"]
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
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    settings = {"method": "dynamic", "op_types": OP_TYPES, "weight_type": "QInt8", "activation_type": "QUInt8",
                "per_channel": True, "reduce_range": True,
                "tool": f"onnxruntime {onnxruntime.__version__} quantize_dynamic"}  # fmt: skip
    with _temp_dir_beside(target) as tmp:
        for name in (ENCODER, DECODER):
            (tmp / name).write_bytes(src.files[name])
        quantize_dynamic(tmp / DECODER, tmp / INT8_DECODER, op_types_to_quantize=OP_TYPES, per_channel=True,
                         reduce_range=True, weight_type=QuantType.QInt8,
                         nodes_to_exclude=_vector_products(tmp / DECODER))  # fmt: skip
        meta = copy.deepcopy(src.meta)
        meta["files"][INT8_DECODER] = {"sha256": sha256_bytes((tmp / INT8_DECODER).read_bytes())}
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
        _move_into_place(tmp, target)
    return target


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
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and any(1 in shapes.get(i, [])[-2:] for i in n.input)]  # fmt: skip


def compare_decoders(bundle: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    """How far the bundle's int8 decoder moves the float one's outputs: greedy captions and first-step numbers."""
    from capcli.runtime import Captioner

    both = load_bundle(bundle)
    ref = Captioner(both, device="cpu", beam=1, lanes=1, precision="float")
    new = Captioner(both, device="cpu", beam=1, lanes=1, precision="int8")
    pixels, inputs = check_pixels(images, both.preprocess, COMPARE_IMAGES, 4)
    encoded = ref.encode(pixels)  # the encoder is the same float graph in both
    start = np.full(len(pixels), both.vocab.start_id, dtype=np.int64)
    state = {n: encoded[n] for n in both.state_names}
    steps = [c.step(start, state, c.bind_context(encoded))[0] for c in (ref, new)]
    same = sum(x.text == y.text for x, y in zip(ref.caption(pixels), new.caption(pixels)))
    return {
        "inputs": inputs,
        "greedy_captions_identical": round(same / len(pixels), 4),
        "first_step_logprobs_max_abs_diff": float(np.abs(steps[0] - steps[1]).max()),
    }
