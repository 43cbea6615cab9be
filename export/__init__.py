"""Checkpoint -> ONNX bundle, checked against PyTorch (``capcli export``).

Needs the ``train`` extra (torch, onnx).  :func:`export_checkpoint` is the
whole command: load, export into a temporary directory, validate and compare
with onnxruntime, then move into place.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from capcli.export.onnx_export import DEFAULT_OPSET, base_provenance, export_bundle
from capcli.export.parity import DEFAULT_TOLERANCE, ParityError, ParityReport, check_parity, find_images

from capcli.bundle import sha256_bytes
from capcli.train.checkpoint import Checkpoint, load_checkpoint

__all__ = [
    "DEFAULT_OPSET",
    "DEFAULT_TOLERANCE",
    "Checkpoint",
    "ParityError",
    "ParityReport",
    "check_parity",
    "export_bundle",
    "export_checkpoint",
    "find_images",
    "load_checkpoint",
]


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
    images: Sequence[str | os.PathLike[str]] = (),
    overwrite: bool = False,
    command: str | None = None,
    report: Callable[[ParityReport], None] = lambda r: None,
) -> Path:
    """Export a training checkpoint as a bundle; ParityError (nothing written) above ``tolerance``.

    ``images``: photos (or folders) for the parity check; by default the
    ``images/`` folder of the data set the checkpoint records
    (``provenance.data_dir`` or ``.data``, or the same under ``train``) when it
    is there, else random inputs.  ``command`` is recorded in
    ``provenance.export``; ``report`` sees the parity result before the verdict.
    """
    ckpt = load_checkpoint(checkpoint)
    images = list(images) or _training_photos(ckpt.extra)
    meta = base_provenance(ckpt.extra)
    meta["checkpoint"] = {"file": Path(checkpoint).name, "sha256": sha256_bytes(Path(checkpoint).read_bytes())}
    if command:
        meta["export"]["command"] = command

    def check(folder: Path) -> dict[str, Any]:
        result = check_parity(ckpt.model, folder, images, tolerance=tolerance)
        report(result)
        if not result.ok:
            worst = max(result.max_abs_diff, key=lambda k: result.max_abs_diff[k])
            raise ParityError(
                f"onnxruntime and PyTorch disagree: {worst} differs by {result.max_abs_diff[worst]:.2e} "
                f"(tolerance {tolerance:g}); no bundle was written"
            )
        return result.to_dict()

    return export_bundle(
        ckpt.model, ckpt.vocab, out_dir, opset=opset, provenance=meta, check=check, overwrite=overwrite
    )


def _training_photos(extra: dict[str, Any]) -> list[Path]:
    for section in ("provenance", "train"):
        info = extra.get(section)
        if isinstance(info, dict):
            for key in ("data", "data_dir"):
                if isinstance(info.get(key), str) and (Path(info[key]) / "images").is_dir():
                    return [Path(info[key]) / "images"]
    return []
