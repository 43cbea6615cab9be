"""Self-critical sequence training (SCST): fine-tune a trained captioner on CIDEr-D itself.

Cross-entropy teaches the next word of a reference; captions are judged as
whole sentences.  SCST (Rennie et al. 2017) samples ``k`` captions per image
from the model, scores each with CIDEr-D against the image's references, and
follows the policy gradient ``-(r - b) * sum_t log p(w_t)``.  The baseline
``b`` of a sample is the mean reward of the image's *other* samples (Luo 2020,
"A Better Variant of Self-Critical Sequence Training"): no extra greedy pass,
and an unbiased estimate.

Sampling obeys the runtime's rules (``decode.SearchSpec``): banned specials are
never drawn, the first word is not <end>, <end> is forced after ``max_len``
words, and a word of the spec's ``say_once`` is not drawn again; a
:class:`~capcli.phrasing.PhraseRule` can make phrasing that no
training sentence uses unlikely.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from capcli import decode
from capcli.phrasing import PhraseRule
from capcli.text import Vocab
from capcli.train.model import CaptionModel, region_grid
from capcli.train.reward import CiderD


class Sampler(nn.Module):
    """Cached frozen backbone output -> ``k`` sampled captions per image, with their log-probabilities.

    One module around the tuned backbone stages and the captioner, so that
    DistributedDataParallel sees every trained parameter used in ``forward``.
    """

    def __init__(self, model: CaptionModel, tuned: nn.Module, spec: decode.SearchSpec, vocab_size: int) -> None:
        super().__init__()
        self.model, self.tuned, self.spec = model, tuned, spec
        self.register_buffer("allowed", allowed_tokens(spec, vocab_size), persistent=False)  # (3, V)

    def forward(self, inputs: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (N, C', h', w') -> tokens (N*k, T) and their log-probabilities (N*k, T).

        Rows are image-major (image ``b`` owns rows ``b*k .. b*k+k-1``).  A row
        holds its words, then <end>, then <pad> (id 0) with log-probability 0.
        """
        grid = region_grid(self.tuned(inputs))  # (N, L, C)
        features = self.model.features(grid)  # (N, L, D)
        return sample(self.model.decoder, self.spec, self.allowed, features, k)


def sample(
    decoder: nn.Module,
    spec: decode.SearchSpec,
    allowed: torch.Tensor,
    features: torch.Tensor | None,
    k: int,
    concept: torch.Tensor | None = None,
    phrasing: PhraseRule | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` sampled captions for each of N images: tokens (N*k, T) and their log-probabilities (N*k, T).

    features (N, L, D), or None for images known by their concept (N, C) alone;
    ``allowed`` (3, V): the tokens allowed at the first step, the steps between,
    and after ``spec.max_len`` words (see :class:`Sampler`).  Words of
    ``spec.say_once`` a row has drawn are barred from it, ``phrasing`` takes its
    penalty off words that would make a trigram no training sentence has, and
    the log-probabilities are those of the distribution a word was drawn from.
    """
    keys, state = decoder.init(features, concept)  # (N, A, L), each (N, H)
    state = tuple(s.repeat_interleave(k, 0) for s in state)  # each (N*k, H): k rows per image
    rows = state[0].size(0)
    device = state[0].device
    tokens = torch.full((rows,), spec.start_id, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    once = torch.from_numpy(spec.said_once_mask(allowed.size(1))).to(device) if len(spec.say_once) else None  # (V,)
    said = torch.zeros(rows, allowed.size(1), dtype=torch.bool, device=device) if once is not None else None  # (N*k, V)
    every = torch.arange(rows, device=device)
    # (N*k,) the word before each row's last (<start> at first), for phrasing
    before = np.full(rows, spec.start_id) if phrasing is not None else None
    words, logps = [], []
    for t in range(spec.max_len + 1):
        logits, state, _ = decoder.step(tokens, state, features, keys, concept)
        if phrasing is not None:
            last = tokens.cpu().numpy()
            logits = logits.float() - torch.from_numpy(phrasing(before, last, logits.size(1))).to(device)  # (N*k, V)
            before = last
        ok = allowed[0 if t == 0 else 2 if t == spec.max_len else 1]  # (V,)
        if said is not None:
            ok = ok & ~said  # (N*k, V): <end> is never barred, so each row keeps a token to draw
        logprobs = torch.log_softmax(logits.float().masked_fill(~ok, float("-inf")), dim=1)  # (N*k, V)
        with torch.no_grad():
            drawn = torch.multinomial(logprobs.exp(), 1).squeeze(1)  # (N*k,)
        drawn = drawn.masked_fill(done, spec.end_id)  # finished rows: a valid id to gather, then masked
        chosen = logprobs.gather(1, drawn.unsqueeze(1)).squeeze(1)  # (N*k,)
        words.append(drawn.masked_fill(done, 0))
        logps.append(torch.where(done, torch.zeros_like(chosen), chosen))
        done = done | (drawn == spec.end_id)
        if said is not None:
            said[every, drawn] |= once[drawn]  # finished rows draw <end>, which is never said once
        tokens = drawn
        if bool(done.all()):  # one device sync a step: stop as soon as every caption has ended
            break
    return torch.stack(words, dim=1), torch.stack(logps, dim=1)  # (N*k, T) each


def allowed_tokens(spec: decode.SearchSpec, vocab_size: int) -> torch.Tensor:
    """(3, V) bool: the search rules' allowed tokens at the first step, the steps between, and after max_len."""
    return torch.from_numpy(np.stack([spec.allowed(t, vocab_size) for t in (0, 1, spec.max_len)]))


def words_of(tokens: np.ndarray, vocab: Vocab) -> list[list[str]]:
    """Sampled rows (N, T) -> word lists, cut at <end>."""
    out = []
    for row in tokens.tolist():
        ids = row[: row.index(vocab.end_id)] if vocab.end_id in row else row
        out.append(vocab.decode(ids))
    return out


def advantages(rewards: np.ndarray, k: int) -> np.ndarray:
    """(N*k,) rewards, image-major -> reward minus the mean reward of the image's other samples."""
    r = rewards.reshape(-1, k)  # (N, k)
    others = (r.sum(axis=1, keepdims=True) - r) / max(1, k - 1)  # (N, k)
    return (r - others).reshape(-1)


# A reward term subtracted from CIDEr-D: (reference rows, sampled words) -> (N*k,) penalties.
Penalty = Callable[[np.ndarray, list[list[str]]], np.ndarray]


def summed(penalties: Sequence[Penalty]) -> Penalty | None:
    """One penalty that is the sum of ``penalties``; None when there are none."""
    if len(penalties) <= 1:
        return penalties[0] if penalties else None
    return lambda rows, words: sum(p(rows, words) for p in penalties)


def self_critical_loss(
    sampler: nn.Module,
    inputs: torch.Tensor,
    images: Sequence[int],
    k: int,
    reward: CiderD,
    vocab: Vocab,
    penalty: Penalty | None = None,
) -> tuple[torch.Tensor, float]:
    """Summed policy-gradient loss of ``k`` samples for each of ``images``, and their summed reward.

    ``images`` are the rows of ``reward``'s references; a sum, like the
    cross-entropy path, so a batch split across processes adds up.  ``penalty``
    (e.g. for objects no reference mentions) is taken off each sample's CIDEr-D.
    """
    tokens, logps = sampler(inputs, k)  # (N*k, T) each
    rows, words = np.repeat(np.asarray(images), k), words_of(tokens.cpu().numpy(), vocab)
    rewards = reward.scores(rows, words)  # (N*k,)
    if penalty is not None:
        rewards = rewards - penalty(rows, words)
    adv = torch.from_numpy(advantages(rewards, k)).to(logps.device)  # (N*k,)
    return -(adv * logps.sum(dim=1)).sum(), float(rewards.sum())
