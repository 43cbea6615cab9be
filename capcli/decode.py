"""Batched greedy and beam search over a one-step decoder, in numpy.

The step function sees ``N`` rows and nothing else::

    step(tokens int64 (N,), state {name: (N, ...)}) -> (logprobs (N, V), new state, alpha (N, L))

Rows are image-major: image ``b`` owns rows ``b*K .. b*K+K-1`` (``K`` = beam
width, 1 for greedy) for the whole search, so the caller binds each image's
context (features, attention keys) repeated ``K`` times once, and only the
recurrent state is reordered here, by integer back-pointers.

Rules shared by both searches (so that beam 1 is exactly greedy):

- ``banned`` ids (the specials <pad>, <start>, <unk>) are never produced;
- the first token cannot be <end> (a caption has at least one word), and after
  ``max_len`` words only <end> may follow;
- a hypothesis is ranked by its length-normalised score
  ``sum(log p) / len ** length_penalty`` where ``len`` counts the words plus
  the <end> token (the simple "len^alpha" rule, not GNMT's ``((5+len)/6)^alpha``);
  ``length_penalty=0`` ranks by the raw sum;
- a hypothesis that can never end (its <end> probability is 0) is returned
  as the best *partial* caption, marked ``finished=False``, instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

State = dict[str, np.ndarray]
StepFn = Callable[[np.ndarray, State], tuple[np.ndarray, State, np.ndarray]]


@dataclass
class Hypothesis:
    ids: list[int]  # word ids: no <start>, no <end>, no banned ids
    score: float  # length-normalised log-probability (see module doc)
    alphas: np.ndarray  # (len(ids), L) attention weights that produced each word
    finished: bool  # False: best partial caption, no <end> was reachable


@dataclass(frozen=True)
class SearchSpec:
    start_id: int
    end_id: int
    banned: Sequence[int]
    max_len: int = 20  # words, not counting <end>
    length_penalty: float = 0.7

    def normalise(self, logprob: np.ndarray | float, length: np.ndarray | int) -> np.ndarray | float:
        return logprob / np.maximum(length, 1) ** self.length_penalty

    def mask(self, logprobs: np.ndarray, t: int) -> np.ndarray:
        """Log-probabilities (N, V) at step ``t`` with forbidden tokens at -inf."""
        out = logprobs.astype(np.float64, copy=True)
        out[:, list(self.banned)] = -np.inf
        if t == 0:
            out[:, self.end_id] = -np.inf
        if t >= self.max_len:
            end = out[:, self.end_id].copy()
            out[:] = -np.inf
            out[:, self.end_id] = end
        return out


def _repeat_state(state: State, k: int) -> State:
    return {name: np.repeat(value, k, axis=0) for name, value in state.items()}


def greedy(step: StepFn, state: State, spec: SearchSpec) -> list[Hypothesis]:
    """Most likely next word at every step, for all B images at once (N = B rows)."""
    n = next(iter(state.values())).shape[0]
    tokens = np.full(n, spec.start_id, dtype=np.int64)
    total = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    finished = np.zeros(n, dtype=bool)
    ids: list[np.ndarray] = []  # each (N,)
    alphas: list[np.ndarray] = []  # each (N, L)
    for t in range(spec.max_len + 1):
        logprobs, state, alpha = step(tokens, state)
        masked = spec.mask(logprobs, t)  # (N, V)
        tokens = masked.argmax(axis=1).astype(np.int64)  # (N,)
        chosen = masked[np.arange(n), tokens]  # (N,)
        stuck = alive & ~np.isfinite(chosen)  # nothing allowed: stays a partial caption
        alive &= ~stuck
        ends = alive & (tokens == spec.end_id)
        total[alive] += chosen[alive]
        finished |= ends
        ids.append(np.where(alive & ~ends, tokens, -1))  # -1: not a word of this row
        alphas.append(alpha)
        alive &= ~ends
        if not alive.any():
            break
    all_ids = np.stack(ids, axis=1)  # (N, T)
    all_alphas = np.stack(alphas, axis=1)  # (N, T, L)
    out = []
    for i in range(n):
        words = all_ids[i] >= 0
        length = int(words.sum()) + int(finished[i])
        out.append(
            Hypothesis(
                ids=all_ids[i][words].tolist(),
                score=float(spec.normalise(total[i], length)),
                alphas=all_alphas[i][words],
                finished=bool(finished[i]),
            )
        )
    return out


def beam_search(step: StepFn, state: State, spec: SearchSpec, beam: int = 3) -> list[Hypothesis]:
    """Beam search for B images at once; ``step`` is called with N = B * beam rows.

    ``state`` holds the initial state per image, (B, ...); it is repeated here.
    Per image, every step ranks all ``beam x V`` extensions of its live
    hypotheses by raw log-probability; <end> extensions ranked within the best
    ``beam`` are set aside as finished (the best one per image is kept; as in
    fairseq, so beam 1 is exactly greedy), the best ``beam`` word extensions
    live on.  An image is done once it holds ``beam`` finished hypotheses and its
    best live one, normalised at its current length, no longer beats the best
    finished one.  Each image returns its best finished hypothesis, or its best
    partial one when none could end.
    """
    b = next(iter(state.values())).shape[0]
    k = beam
    n = b * k
    state = _repeat_state(state, k)
    tokens = np.full(n, spec.start_id, dtype=np.int64)
    # Only the first row of each image is live at the start: all K rows are identical.
    scores = np.full((b, k), -np.inf)
    scores[:, 0] = 0.0
    history = np.zeros((n, 0), dtype=np.int64)  # (N, t) word ids of each live row
    alpha_history: np.ndarray | None = None  # (N, t, L)
    best: list[Hypothesis | None] = [None] * b
    n_finished = np.zeros(b, dtype=int)
    done = np.zeros(b, dtype=bool)
    partial: list[Hypothesis | None] = [None] * b

    for t in range(spec.max_len + 1):
        logprobs, state, alpha = step(tokens, state)
        v = logprobs.shape[1]
        steps_alpha = alpha[:, None, :] if alpha_history is None else np.concatenate(
            [alpha_history, alpha[:, None, :]], axis=1
        )  # (N, t+1, L)
        cand = scores.reshape(n, 1) + spec.mask(logprobs, t)  # (N, V)
        cand = cand.reshape(b, k * v)
        width = min(2 * k, k * v)  # <= K of them can be <end>, so >= K words remain
        top = np.argpartition(-cand, width - 1, axis=1)[:, :width]  # (B, 2K)

        new_rows = np.zeros(n, dtype=np.int64)  # back-pointers into the previous rows
        new_tokens = np.full(n, spec.end_id, dtype=np.int64)
        new_scores = np.full((b, k), -np.inf)
        for i in range(b):
            if done[i]:
                new_rows[i * k : (i + 1) * k] = i * k
                continue
            order = top[i][np.lexsort((top[i], -cand[i, top[i]]))]  # best first, ties by index
            live = 0
            for rank, flat in enumerate(order):
                score = cand[i, flat]
                if not np.isfinite(score):
                    break
                row, token = i * k + flat // v, int(flat % v)
                if token == spec.end_id:
                    if rank >= k:  # as in fairseq: an <end> outside the top K is not taken
                        continue
                    n_finished[i] += 1
                    norm = float(spec.normalise(score, t + 1))
                    if best[i] is None or norm > best[i].score:
                        words = history[row].tolist()
                        best[i] = Hypothesis(words, norm, steps_alpha[row, :t], True)
                    continue
                if live < k:
                    new_rows[i * k + live] = row
                    new_tokens[i * k + live] = token
                    new_scores[i, live] = score
                    live += 1
            # Rows left without a hypothesis copy a live row but stay at -inf.
            new_rows[i * k + live : (i + 1) * k] = new_rows[i * k] if live else i * k
            if live == 0:
                done[i] = True
            elif n_finished[i] >= k:
                best_live = float(spec.normalise(new_scores[i, 0], t + 1))
                done[i] = best_live <= best[i].score

        # Remember each image's best live hypothesis before moving on: the partial fallback.
        for i in range(b):
            if best[i] is None and np.isfinite(scores[i]).any():
                j = int(np.argmax(scores[i]))
                row = i * k + j
                partial[i] = Hypothesis(
                    history[row].tolist(), float(spec.normalise(scores[i, j], t)), steps_alpha[row, :t], False
                )
        history = np.concatenate([history[new_rows], new_tokens[:, None]], axis=1)  # (N, t+1)
        alpha_history = steps_alpha[new_rows]  # (N, t+1, L)
        state = {name: value[new_rows] for name, value in state.items()}
        tokens = new_tokens
        scores = new_scores
        if done.all():
            break
    # partial[i] is set at t = 0 at the latest, so every image has an answer.
    return [hyp if hyp is not None else p for hyp, p in zip(best, partial)]  # type: ignore[misc]
