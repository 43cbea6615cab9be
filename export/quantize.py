"""Bundle -> int8 bundle (``capcli export --quantize``), with onnxruntime's dynamic quantisation.

Every matrix product with a weight matrix gets int8 weights, and its
activations are quantised on the fly at each call: in decoder.onnx that is
the step's matrix work (GRU/LSTM gates, attention query, context gate, output
layer); in encoder.onnx the region projection and the attention keys.
Products with a single output column (the attention score, ``tanh(...) @ w``)
stay float: quantising their large input costs more than it saves.  The
convolutional backbone stays float32: static int8 convolutions (QDQ or
QOperator, per channel, 32 calibration photos) were no faster on an AVX2 CPU
and moved the region features by ~70% of their size.

Weights are signed 8-bit per output channel with ``reduce_range`` (7 bits):
on CPUs without VNNI, onnxruntime's u8 x s8 kernels sum pairs of products in
16 bits, which full-range weights overflow (log-probabilities then moved by
0.58 instead of 0.1 on a trained Flickr8k model).

The result is an ordinary bundle: the same inputs and outputs, its own
sha256s, ``"quantized": true`` in model.json, and under
``provenance.quantization`` what was done and how far it moved the outputs
(against the float bundle on a few photos: greedy caption agreement and
largest log-probability differences).
"""

from __future__ import annotations

import copy
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from capcli.bundle import DECODER, ENCODER, load_bundle, sha256_bytes
from export import _training_photos
from export.onnx_export import _check_target, _move_into_place, _temp_dir_beside, write_meta
from export.parity import find_images

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
    """Write the int8 version of the bundle at ``source`` to ``out_dir``, atomically.

    ``images``: photos or folders to compare the two bundles on (up to 16
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
    with _temp_dir_beside(target) as tmp, tempfile.TemporaryDirectory() as scratch:
        for name in (ENCODER, DECODER):
            plain = Path(scratch) / name
            plain.write_bytes(src.files[name])
            quantize_dynamic(plain, tmp / name, op_types_to_quantize=OP_TYPES, per_channel=True, reduce_range=True,
                             weight_type=QuantType.QInt8, nodes_to_exclude=_vector_products(plain))  # fmt: skip
        meta = copy.deepcopy(src.meta)
        meta["quantized"] = True
        meta["files"] = {name: {"sha256": sha256_bytes((tmp / name).read_bytes())} for name in (ENCODER, DECODER)}
        provenance = meta.setdefault("provenance", {})
        provenance["quantization"] = {
            **settings,
            "source": {"path": str(src.path), **{name: src.meta["files"][name]["sha256"] for name in (ENCODER, DECODER)}},
            **({"command": command} if command else {}),
        }
        write_meta(tmp, meta)
        photos = list(images) or _training_photos({"provenance": src.provenance, "train": src.provenance.get("train")})
        provenance["quantization"]["comparison"] = compare_bundles(src.path, tmp, photos)
        write_meta(tmp, meta)
        _move_into_place(tmp, target)
    return target


def _vector_products(path: Path) -> list[str]:
    """MatMul nodes whose weight has a single column: matrix-vector products, left in float."""
    import onnx

    model = onnx.load(str(path))
    shapes = {init.name: list(init.dims) for init in model.graph.initializer}
    for node in model.graph.node:  # weights may also come as Constant nodes
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.dims:
            shapes[node.output[0]] = list(node.attribute[0].t.dims)
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and any(shapes.get(i, [0])[-1:] == [1] for i in n.input[1:])]  # fmt: skip


def compare_bundles(
    reference: str | os.PathLike[str], candidate: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, Any]:
    """How far ``candidate`` moves the outputs of ``reference``: greedy captions and first-step numbers."""
    from capcli.images import load
    from capcli.runtime import Captioner

    ref = Captioner(load_bundle(reference), device="cpu", beam=1, lanes=1)
    new = Captioner(load_bundle(candidate), device="cpu", beam=1, lanes=1)
    files = find_images(images, limit=COMPARE_IMAGES)
    if files:
        pixels = np.stack([load(str(f), ref.bundle.preprocess).array for f in files])  # (B, 3, H, W)
        inputs = f"{len(files)} photo(s)"
    else:
        h, w = ref.bundle.preprocess.size
        pixels = np.random.default_rng(0).standard_normal((4, 3, h, w)).astype(np.float32)
        inputs = "4 random images (no photos given)"
    a, b = ref.encode(pixels), new.encode(pixels)
    start = np.full(len(pixels), ref.bundle.vocab.start_id, dtype=np.int64)
    names = ref.bundle.state_names
    steps = [c.step(start, {n: e[n] for n in names}, c.bind_context(e, 1))[0] for c, e in ((ref, a), (new, b))]
    same = sum(x.text == y.text for x, y in zip(ref.caption(pixels), new.caption(pixels)))
    return {
        "inputs": inputs,
        "greedy_captions_identical": round(same / len(pixels), 4),
        "features_max_abs_diff": float(np.abs(a["features"] - b["features"]).max()),
        "first_step_logprobs_max_abs_diff": float(np.abs(steps[0] - steps[1]).max()),
    }
