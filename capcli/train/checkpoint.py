"""Training checkpoints: plain dicts of tensors and Python values, written atomically.

A checkpoint loads with ``torch.load(path, weights_only=True)`` (no pickled
classes).  Keys:

- ``format`` ("capcli-checkpoint"), ``format_version``
- ``config``: ``ModelConfig.to_dict()``; ``vocab``: the token list (specials first)
- ``model``: the model's ``state_dict``
- ``optimizer``, ``scheduler``: their ``state_dict``s (no RNG state: the loop seeds each
  epoch from the run's seed, so a resumed run draws the same numbers)
- ``epoch`` (last finished, 1-based), ``step``, ``finished`` (bool)
- ``options``: the training options (JSON-able dict); ``history``: per-epoch metrics
- ``best``: {"epoch", "metrics"} of the best dev epoch so far
- ``provenance``: data set, command, hardware, time and dev metrics with their protocol
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from capcli.errors import FatalError
from capcli.text import Vocab

FORMAT = "capcli-checkpoint"
FORMAT_VERSION = 1


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    tmp = temp_sibling(path)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def temp_sibling(path: Path) -> Path:
    """A temporary name in ``path``'s folder (so ``os.replace`` is atomic), unique per process."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file all at once: temporary file in the same folder, then rename."""
    tmp = temp_sibling(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU); a clear error when it is not one of ours."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FatalError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # truncated file, pickle refused by weights_only, ...
        raise FatalError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise FatalError(f"{path} is not a capcli checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise FatalError(f"{path}: checkpoint format version {payload.get('format_version')} is not supported")
    return payload


def model_from_checkpoint(payload: dict[str, Any]) -> tuple[torch.nn.Module, Vocab]:
    """Rebuild the model (eval mode, CPU) and its vocabulary from a loaded checkpoint."""
    from capcli.train.model import CaptionModel, ModelConfig

    config = ModelConfig.from_dict(payload["config"])
    # The state dict holds every weight: skip loading (or downloading) pretrained ones.
    model = CaptionModel(dataclasses.replace(config, pretrained=False))
    model.config = config
    model.load_state_dict(payload["model"])
    return model.eval(), Vocab(tuple(payload["vocab"]))
