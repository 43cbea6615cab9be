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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from capcli.atomic import replacing
from capcli.errors import FatalError
from capcli.text import Vocab

FORMAT = "capcli-checkpoint"
FORMAT_VERSION = 1


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    with replacing(path) as tmp:
        torch.save(payload, tmp)


REQUIRED = ("config", "vocab", "model")  # all a model needs; the rest is training state and provenance


@dataclass
class Checkpoint:
    model: torch.nn.Module  # the CaptionModel, eval mode, on the CPU
    vocab: Vocab
    extra: dict[str, Any]  # every other key (provenance, train settings, history, ...)


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU); a clear error when it is not one of ours.

    Needs only ``config``, ``vocab`` and ``model``; ``format``/``format_version``,
    when present, must be ours.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FatalError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # noqa: BLE001 - truncated file, pickle refused by weights_only, ...
        raise FatalError(f"{path}: not a loadable checkpoint ({type(exc).__name__}: {exc})"[:800]) from None
    if not isinstance(payload, dict) or payload.get("format", FORMAT) != FORMAT:
        raise FatalError(f"{path} is not a capcli checkpoint")
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise FatalError(f"{path}: not a capcli checkpoint (missing {', '.join(missing)})")
    if payload.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise FatalError(f"{path}: checkpoint format version {payload.get('format_version')} is not supported")
    return payload


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint file and rebuild its model (what ``capcli export`` and the benchmark load)."""
    payload = load(path)
    model, vocab = model_from_checkpoint(payload, source=str(path))
    extra = {k: v for k, v in payload.items() if k not in (*REQUIRED, "format", "format_version")}
    return Checkpoint(model, vocab, extra)


def model_from_checkpoint(payload: dict[str, Any], source: str = "checkpoint") -> tuple[torch.nn.Module, Vocab]:
    """Rebuild the model (eval mode, CPU) and its vocabulary from a loaded checkpoint."""
    from capcli.train.model import CaptionModel, ModelConfig

    try:
        config = ModelConfig.from_dict(payload["config"])
        vocab = Vocab(tuple(payload["vocab"]))
    except (TypeError, ValueError) as exc:
        raise FatalError(f"{source}: bad config or vocabulary: {exc}") from None
    if len(vocab) != config.vocab_size:
        raise FatalError(f"{source}: vocabulary has {len(vocab)} tokens but the model expects {config.vocab_size}")
    # The state dict holds every weight: skip loading (or downloading) pretrained ones.
    model = CaptionModel(dataclasses.replace(config, pretrained=False))
    model.config = config
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise FatalError(f"{source}: weights do not fit the model config: {exc}"[:800]) from None
    return model.eval(), vocab
