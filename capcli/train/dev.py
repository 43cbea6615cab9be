"""Dev evaluation during training: dev loss, and captions decoded exactly as ``capcli caption`` decodes.

The search is :mod:`capcli.decode`'s, with the runtime's rules
(:meth:`capcli.decode.SearchSpec.runtime`), driving the PyTorch decoder step;
the captions are scored with the Java-free BLEU-4 and CIDEr-D
(:func:`capcli.metrics.quick_scores`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from capcli import decode
from capcli.metrics import quick_scores
from capcli.text import Vocab, detokenize
from capcli.train.data import TrainData
from capcli.train.model import CaptionModel, ModelConfig
from capcli.train.objectives import Forward, autocast, grid, losses, targets


def search_spec(vocab: Vocab, config: ModelConfig) -> decode.SearchSpec:
    """The runtime's search rules (:meth:`capcli.decode.SearchSpec.runtime`): dev captions are
    decoded as ``capcli caption`` will decode them."""
    return decode.SearchSpec.runtime(vocab, config.max_len)


@torch.no_grad()
def evaluate(
    model: CaptionModel,
    data: TrainData,
    vocab: Vocab,
    config: ModelConfig,
    beam: int = 1,
    label_smoothing: float = 0.0,
    batch_size: int = 128,
) -> tuple[dict[str, float], dict[str, str]]:
    """Dev loss (teacher forcing) and BLEU-4/CIDEr of captions decoded like the runtime does.

    Returns ({"dev_loss", "dev_BLEU-4", "dev_CIDEr"}, {image path: caption}).
    """
    model.eval()
    _, tuned = model.frozen_and_trainable_backbone()
    forward = Forward(model, tuned)
    total = torch.zeros((), device=data.captions.device)
    for start in range(0, len(data.captions), 2 * batch_size):
        rows = torch.arange(start, min(start + 2 * batch_size, len(data.captions)))
        total += losses(forward, data, rows, label_smoothing)[0]
    spec = search_spec(vocab, config)
    hypotheses: dict[str, str] = {}
    for start in range(0, len(data.samples), batch_size):
        images = torch.arange(start, min(start + batch_size, len(data.samples)))
        for i, hyp in zip(images.tolist(), search(model, tuned, data.inputs(images), spec, beam)):
            hypotheses[str(data.samples[i].image)] = detokenize(vocab.decode(hyp.ids))
    references = {str(s.image): list(s.captions) for s in data.samples}
    scores = quick_scores(references, hypotheses)
    dev_loss = float(total) / targets(data, torch.arange(len(data.captions)))  # per predicted token
    return {"dev_loss": dev_loss, **{f"dev_{k}": v for k, v in scores.items()}}, hypotheses


def search(
    model: CaptionModel, tuned: nn.Module, inputs: torch.Tensor, spec: decode.SearchSpec, beam: int
) -> list[decode.Hypothesis]:
    """capcli.decode's greedy/beam search driving the PyTorch decoder step."""
    device = inputs.device
    with autocast(device):
        features = model.features(grid(tuned, inputs))  # (B, L, D)
        keys, state = model.decoder.init(features)  # (B, A, L), each (B, H)
    names = decode.state_names(model.config.decoder)  # no concept: one view

    def step(tokens: np.ndarray, st: decode.State, images: np.ndarray) -> tuple[np.ndarray, decode.State, np.ndarray]:
        which = torch.from_numpy(images).to(device)
        with autocast(device):
            logits, new, alpha = model.decoder.step(
                torch.from_numpy(tokens).to(device),
                tuple(torch.from_numpy(st[n]).to(device) for n in names),
                features[which],
                keys[which],
            )
        logprobs = torch.log_softmax(logits.float(), dim=1)  # (N, V)
        return (
            logprobs.cpu().numpy(),
            {n: s.float().cpu().numpy() for n, s in zip(names, new)},
            alpha.float().cpu().numpy(),
        )

    initial = {n: s.float().cpu().numpy() for n, s in zip(names, state)}
    if beam > 1:
        return decode.beam_search(step, initial, spec, beam=beam)
    return decode.greedy(step, initial, spec)
