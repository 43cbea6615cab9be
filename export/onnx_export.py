"""Checkpoint or model -> bundle directory (encoder.onnx, decoder.onnx, model.json).

The two graphs are thin wrappers around the training model, so what runs in
onnxruntime is the code that was trained:

- ``EncoderGraph``: backbone -> flatten -> ``model.project`` -> ``decoder.init``
  (features, attention keys, initial state), once per image;
- ``DecoderStep``: ``decoder.step`` + log-softmax, one word for N rows of M
  images (image-major): the per-image context (features, keys) is an input
  of M rows, the token and recurrent state of N.

Exported in eval mode with torch's TorchScript-based exporter (``dynamo=False``:
with torch 2.14 the dynamo exporter cannot write opset 17 for these graphs),
batch axes dynamic, checked with ``onnx.checker``.  Everything is written into
a temporary directory beside the target, checked there (bundle validation and
the parity check, see :mod:`export.parity`), and only then moved into place.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from capcli.export.search_graph import add_search_graphs
from torch import nn

from capcli import __version__
from capcli.atomic import move_into_place, temp_dir_beside
from capcli.bundle import DECODER, ENCODER, FORMAT, FORMAT_VERSION, MODEL_JSON, sha256_bytes
from capcli.decode import CONCEPT_WEIGHT
from capcli.decode import state_names as decoder_state_names
from capcli.errors import FatalError
from capcli.text import Vocab
from capcli.train.model import CaptionModel, Decoder, ModelConfig
from capcli.train.tagger import labels_for

DEFAULT_OPSET = 17
BATCH = "batch"  # images, in encoder.onnx and in the decoder's context inputs
ROWS = "rows"  # decoder rows: a whole number of them per image


class EncoderGraph(nn.Module):
    """encoder.onnx: image -> features, keys[, concept], h[, c][, tags]."""

    def __init__(self, model: CaptionModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.model.encode(image)
        tags = (encoded.tags,) if encoded.tags is not None else ()
        return (*encoded.context, *encoded.state, *tags)


class DecoderStep(nn.Module):
    """decoder.onnx: token (N,), h[, c] (N, H), features (M, L, D), keys (M, A, L)[, concept (M, C)]
    -> logprobs, h_out[, c_out], alpha.

    N rows of M images, image-major (see :class:`capcli.train.model.Attention`).
    """

    def __init__(self, decoder: Decoder, grounded: bool) -> None:
        super().__init__()
        self.decoder, self.grounded = decoder, grounded

    def forward(self, token: torch.Tensor, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.grounded:
            *state, features, keys, concept = inputs
        else:
            (*state, features, keys), concept = inputs, None
        logits, new_state, alpha = self.decoder.step(token, tuple(state), features, keys, concept)
        return (torch.log_softmax(logits, dim=1), *new_state, alpha)  # (N, V), each (N, H), (N, L)


def state_names(config: ModelConfig) -> list[str]:
    return list(decoder_state_names(config.decoder, bool(config.concept_view)))


def context_names(config: ModelConfig) -> list[str]:
    """The decoder's per-image inputs, in the order the encoder outputs them."""
    return ["features", "keys", *(["concept"] if config.grounded else [])]


def export_onnx(model: CaptionModel, folder: Path, opset: int = DEFAULT_OPSET) -> None:
    """Write encoder.onnx and decoder.onnx into ``folder`` and check them."""
    cfg = model.config
    encoder = EncoderGraph(model).eval()
    images = torch.randn(2, 3, *model.backbone.spec.image_size)  # (2, 3, H, W): batch 2, no size-1 axis specialised
    with torch.no_grad():
        outputs = encoder(images)
    context = outputs[: len(context_names(cfg))]
    enc_out = [*context_names(cfg), *state_names(cfg), *(["tags"] if model.tagger is not None else [])]
    with _quiet_exporter():
        torch.onnx.export(
            encoder,
            (images,),
            str(folder / ENCODER),
            input_names=["image"],
            output_names=enc_out,
            dynamic_axes={name: {0: BATCH} for name in ["image", *enc_out]},
            opset_version=opset,
            dynamo=False,
        )
    _fix_context_sizes(folder / ENCODER, cfg)
    export_decoder(model.decoder, cfg, context, folder / DECODER, opset)


def export_decoder(
    decoder: Decoder, cfg: ModelConfig, context: tuple[torch.Tensor, ...], path: Path, opset: int
) -> None:
    """Write and check decoder.onnx for ``decoder``, traced on the context of 2 images (2 rows each).

    ``context``: the encoder's per-image outputs, in :func:`context_names` order.
    """
    states = state_names(cfg)
    step = DecoderStep(decoder, cfg.grounded).eval()
    rows = 2 * context[0].size(0)  # (2 rows per image: the rows axis is not tied to the images axis)
    tokens = torch.arange(1, rows + 1, dtype=torch.long) % cfg.vocab_size
    state = [torch.rand(rows, 1) if s == CONCEPT_WEIGHT else torch.randn(rows, cfg.hidden_dim) for s in states]
    dec_in = ["token", *states, *context_names(cfg)]
    dec_out = ["logprobs", *(f"{s}_out" for s in states), "alpha"]
    axes = {name: {0: BATCH if name in context_names(cfg) else ROWS} for name in dec_in + dec_out}
    with _quiet_exporter():
        torch.onnx.export(
            step,
            (tokens, *state, *context),
            str(path),
            input_names=dec_in,
            output_names=dec_out,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    _fix_context_sizes(path, cfg)


def _fix_context_sizes(path: Path, cfg: ModelConfig) -> None:
    """Write the fixed sizes of the context tensors into the graph's signature, then check it.

    The tracer leaves the region axis symbolic after flatten(); it is fixed by the backbone.
    """
    import onnx

    regions = cfg.grid[0] * cfg.grid[1]
    fixed = {
        "features": [regions, cfg.feature_dim],
        "keys": [cfg.attention_dim, regions],
        "concept": [cfg.concept_dim],
        "tags": [cfg.classes],
    }  # beyond the batch axis
    graph = onnx.load(str(path))
    for value in [*graph.graph.input, *graph.graph.output]:
        for dim, size in zip(value.type.tensor_type.shape.dim[1:], fixed.get(value.name, [])):
            dim.Clear()
            dim.dim_value = size
    onnx.save(graph, str(path))
    onnx.checker.check_model(str(path), full_check=True)


def bundle_meta(
    model: CaptionModel, vocab: Vocab, folder: Path, opset: int, provenance: dict[str, Any]
) -> dict[str, Any]:
    """model.json for the ONNX files already in ``folder``."""
    cfg = model.config
    spec = model.backbone.spec
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "vocab": {"tokens": list(vocab.tokens)},
        "max_len": cfg.max_len,
        "preprocess": spec.preprocess.to_dict(),
        "grid": list(spec.grid),
        "feature_dim": cfg.feature_dim,
        "attention_dim": cfg.attention_dim,
        "decoder": {
            "kind": cfg.decoder,
            "hidden": cfg.hidden_dim,
            "embed": cfg.embed_dim,
            **({"concept_view": cfg.concept_view} if cfg.concept_view else {}),
        },
        "backbone": {
            "name": cfg.backbone,
            "source": spec.source,
            "image_size": list(spec.image_size),
            "channels": spec.channels,
            "pretrained": cfg.pretrained,
        },
        "model_config": cfg.to_dict(),
        **({"concept": {"dim": cfg.concept_dim, "top_k": cfg.concepts}} if cfg.grounded else {}),
        **({"tags": {"labels": list(labels_for(cfg.backbone)), "source": _tag_source(cfg)}} if cfg.classes else {}),
        "opset": opset,
        "files": {name: {"sha256": sha256_bytes((folder / name).read_bytes())} for name in (ENCODER, DECODER)},
        "provenance": provenance,
    }


def _tag_source(cfg: ModelConfig) -> str:
    return f"the {cfg.backbone} ImageNet-1k classifier, unmodified (its own top {cfg.tagger_stages} stages)"


def write_meta(folder: Path, meta: dict[str, Any]) -> None:
    (folder / MODEL_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def base_provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the checkpoint says about itself, plus when and with what it was exported."""
    import onnx

    provenance: dict[str, Any] = {}
    for key in ("provenance", "train"):
        if extra and isinstance(extra.get(key), dict):
            provenance.update(extra[key] if key == "provenance" else {"train": extra[key]})
    provenance["export"] = {
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "capcli": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
    }
    return provenance


def export_bundle(
    model: CaptionModel,
    vocab: Vocab,
    out_dir: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    provenance: dict[str, Any] | None = None,
    check: Any = None,
    overwrite: bool = False,
) -> Path:
    """Export ``model`` as a bundle at ``out_dir``, atomically.

    ``check(folder)`` runs on the finished temporary bundle before it is moved
    into place (the parity check); it may return a dict that is stored as
    ``provenance["parity"]``, and raises to abort (nothing is left behind).
    """
    target = Path(out_dir)
    _prepare_target(target, overwrite)
    model.eval()
    with temp_dir_beside(target) as tmp:
        export_onnx(model, tmp, opset)
        meta = bundle_meta(model, vocab, tmp, opset, dict(provenance or {}))
        add_search_graphs(tmp, meta)
        write_meta(tmp, meta)
        if check is not None:
            result = check(tmp)
            if result is not None:
                meta["provenance"]["parity"] = result
                write_meta(tmp, meta)
        move_into_place(tmp, target)
    return target


def _prepare_target(target: Path, overwrite: bool) -> None:
    """Refuse a ``target`` that is not an empty folder or a bundle ``overwrite`` may replace; create its parent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        return
    if not target.is_dir():
        raise FatalError(f"{target}: exists and is not a directory")
    if any(target.iterdir()):
        if not (target / MODEL_JSON).is_file():
            raise FatalError(f"{target}: exists, is not empty and is not a capcli bundle; refusing to replace it")
        if not overwrite:
            raise FatalError(f"{target}: a bundle is already there (pass --force to replace it)")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx's deprecation and tracer warnings say nothing about the result."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
