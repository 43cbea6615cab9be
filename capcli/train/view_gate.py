"""The view gate of a two-view decoder: which photos are everyday scenes rather than Flickr8k's.

A grounded decoder reading the tagger's concept alone (the photo's regions dropped, as the
caption-only sentences trained it) is a fair captioner of everyday scenes and a poor one of
Flickr8k's people (ImageNet has no class for a person); reading both, it is the other way round.
On the photos its gate calls everyday, a two-view decoder ranks words by the product of the two
(``ModelConfig.concept_view``).  The gate is a logistic regression from what the decoder's initial
state reads (the mean region feature and the concept vector) to "an everyday training photo, not a
Flickr8k one", with the two classes weighted equally; nothing else of the model changes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from capcli.train.concepts import top_concepts
from capcli.train.model import CaptionModel


def gate_inputs(model: CaptionModel, features: torch.Tensor, probs: np.ndarray) -> torch.Tensor:
    """Region features (N, L, D) and tagger probabilities (N, K) -> what the gate reads (N, D + C)."""
    dec = model.decoder
    classes, weights = top_concepts(probs, dec.top_k)
    concept = dec.concept(torch.from_numpy(classes), torch.from_numpy(weights))  # (N, C)
    return dec.summary(features.float(), concept).detach()  # (N, D + C)


def fit_gate(
    flickr: torch.Tensor, everyday: torch.Tensor, weight_decay: float = 1e-3, steps: int = 300, seed: int = 0
) -> torch.nn.Linear:
    """A logistic regression (D + C -> 1) whose positive logit means "everyday", from the gate inputs of
    Flickr8k photos (n, D + C) and everyday photos (m, D + C), each class weighing the same in all."""
    torch.manual_seed(seed)
    x = torch.cat([flickr, everyday])  # (n + m, D + C)
    y = torch.cat([torch.zeros(len(flickr)), torch.ones(len(everyday))])  # (n + m,)
    mean, std = x.mean(dim=0), x.std(dim=0) + 1e-6  # fitted on standardised inputs, folded in below
    gate = torch.nn.Linear(x.size(1), 1)
    optimizer = torch.optim.Adam(gate.parameters(), lr=1e-2, weight_decay=weight_decay)
    balance = torch.tensor(len(flickr) / len(everyday))
    for _ in range(steps):
        optimizer.zero_grad()
        logits = gate((x - mean) / std).squeeze(1)  # (n + m,)
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=balance).backward()
        optimizer.step()
    folded = torch.nn.Linear(x.size(1), 1)
    with torch.no_grad():
        folded.weight.copy_(gate.weight / std)
        folded.bias.copy_(gate.bias - (gate.weight * mean / std).sum())
    return folded


def everyday_share(gate: torch.nn.Linear, inputs: torch.Tensor) -> float:
    """The share of photos (gate inputs (N, D + C)) the gate calls everyday scenes."""
    with torch.no_grad():
        return float((gate(inputs) > 0).float().mean())


def with_concept_view(payload: dict[str, Any], gate: torch.nn.Linear, weight: float) -> dict[str, Any]:
    """A grounded checkpoint ``payload`` as a two-view decoder: ``gate`` and the concept-only view's ``weight``."""
    config = dict(payload["config"], concept_view=weight)
    model = dict(payload["model"])
    model["decoder.view_gate.weight"] = gate.weight.detach().clone()
    model["decoder.view_gate.bias"] = gate.bias.detach().clone()
    return {k: v for k, v in payload.items() if k not in ("optimizer", "scheduler")} | {
        "config": config,
        "model": model,
        "finished": True,
    }
