"""Bundle -> the same bundle with its float weights stored in 16 bits (``capcli export --float16-weights``).

Each large float32 weight of ``encoder.onnx`` and ``decoder.onnx`` is stored
as float16 and cast back to float32 by a ``Cast`` node at the head of the
graph.  onnxruntime folds those casts into float32 weights when it opens the
session, so the graphs still compute in float32 at the same speed; only the
weights are rounded (relative error at most 2^-11).  It halves the files: the
grounded model's encoder (captioner + tagger) and float decoder would
otherwise take the bundle past 50 MB.  ``decoder.int8.onnx`` is left as it is
(its weights are int8 already), so quantise before storing in float16.

model.json records, under ``provenance.weights``, what was done and how far
it moved the outputs on a few photos (greedy captions, encoder features and
first-step log-probabilities, 16-bit vs 32-bit weights).
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
from capcli.export.quantize import compare_captioners
from capcli.export.search_graph import add_search_graphs

from capcli.atomic import move_into_place, temp_dir_beside
from capcli.bundle import DECODER, ENCODER, load_bundle, sha256_bytes

MIN_ELEMENTS = 1024  # smaller tensors (biases, norms) stay float32: they weigh nothing


def store_float16(path: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Rewrite the ONNX file at ``path`` with its float32 initializers of ``min_elements`` or more stored as
    float16 behind a Cast; returns how many were converted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    keep, casts = [], []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < min_elements:
            keep.append(init)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{init.name}.float16")
        keep.append(half)
        casts.append(helper.make_node("Cast", [half.name], [init.name], to=TensorProto.FLOAT))
    del graph.initializer[:]
    graph.initializer.extend(keep)
    nodes = casts + list(graph.node)  # the casts first: the graph stays topologically sorted
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    return len(casts)


def float16_bundle(
    source: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    command: str | None = None,
) -> Path:
    """Write the bundle at ``source`` with float16-stored weights to ``out_dir``, atomically."""
    src = load_bundle(source)  # validated before anything is written
    target = Path(out_dir)
    _prepare_target(target, overwrite)
    with temp_dir_beside(target) as tmp:
        converted = {}
        for name, data in src.files.items():
            (tmp / name).write_bytes(data)
            if name in (ENCODER, DECODER):
                converted[name] = store_float16(tmp / name)
        meta = copy.deepcopy(src.meta)
        for name in (ENCODER, DECODER):
            meta["files"][name] = {"sha256": sha256_bytes((tmp / name).read_bytes())}
        if meta.get("search"):  # the float search graph reads decoder.onnx's bytes: made anew from the new ones
            add_search_graphs(tmp, meta)
        photos = list(images) or _training_photos({"provenance": src.provenance, "train": src.provenance.get("train")})
        weights = meta.setdefault("provenance", {})["weights"] = {
            "storage": "float16",
            "files": {name: {"tensors": n, "bytes_before": len(src.files[name])} for name, n in converted.items()},
            "min_elements": MIN_ELEMENTS,
            **({"command": command} if command else {}),
        }
        write_meta(tmp, meta)
        weights["comparison"] = compare_weights(src.path, tmp, photos)
        write_meta(tmp, meta)
        move_into_place(tmp, target)
    return target


def compare_weights(
    reference: str | os.PathLike[str], stored: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]] = ()
) -> dict[str, Any]:
    """How far 16-bit weights move the float graphs: greedy captions, features and first-step log-probabilities."""
    from capcli.runtime import Captioner

    ref, new = (
        Captioner(load_bundle(path), device="cpu", beam=1, lanes=1, precision="float") for path in (reference, stored)
    )
    comparison, encoded = compare_captioners(ref, new, images)
    features = float(np.abs(encoded[0]["features"] - encoded[1]["features"]).max())
    return {**comparison, "features_max_abs_diff": features}
