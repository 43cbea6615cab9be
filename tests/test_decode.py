"""Greedy and beam search on hand-made step tables whose next-token
distribution depends on the whole prefix (carried in the state, so the
back-pointer reordering is exercised)."""

from __future__ import annotations

import itertools
import zlib

import numpy as np
import pytest

from capcli.decode import SearchSpec, beam_search, greedy

V = 7  # 4 specials + 3 words
WORDS = (4, 5, 6)
L = 5
SPEC = SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=3, length_penalty=0.7)


def _table(image: int, prefix: tuple[int, ...], end_allowed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (logprobs (V,), alpha (L,)) for one image and word prefix."""
    rng = np.random.default_rng(zlib.crc32(repr((image, prefix)).encode()))
    logits = rng.normal(scale=2.0, size=V)
    if not end_allowed:
        logits[2] = -np.inf
    logprobs = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    alpha = rng.dirichlet(np.ones(L))
    return logprobs, alpha


def make_step(end_allowed: bool = True):
    def step(tokens: np.ndarray, state: dict[str, np.ndarray], images: np.ndarray):
        prefix = state["prefix"]  # (N, 12): image id, then words, -1 padded
        lp, al, new = [], [], prefix.copy()
        for r, tok in enumerate(tokens):
            words = [int(w) for w in prefix[r, 1:] if w >= 0]
            if tok >= 4:
                words.append(int(tok))
                new[r, len(words)] = tok
            logprobs, alpha = _table(int(prefix[r, 0]), tuple(words), end_allowed)
            lp.append(logprobs)
            al.append(alpha)
        return np.stack(lp).astype(np.float32), {"prefix": new}, np.stack(al).astype(np.float32)

    return step


def initial_state(images: list[int]) -> dict[str, np.ndarray]:
    prefix = np.full((len(images), 12), -1, dtype=np.int64)  # room for max_len <= 10
    prefix[:, 0] = images
    return {"prefix": prefix}


def exhaustive(image: int, spec: SearchSpec) -> tuple[list[int], float]:
    """Best finished caption by scoring every allowed sequence."""
    best: tuple[list[int], float] = ([], -np.inf)
    for n in range(1, spec.max_len + 1):
        for words in itertools.product(WORDS, repeat=n):
            total = 0.0
            for t in range(n + 1):
                logprobs, _ = _table(image, tuple(words[:t]), True)
                total += float(logprobs[words[t]] if t < n else logprobs[2])
            score = total / (n + 1) ** spec.length_penalty
            if score > best[1]:
                best = (list(words), score)
    return best


def expected_alphas(image: int, words: list[int]) -> np.ndarray:
    return np.stack([_table(image, tuple(words[:t]), True)[1] for t in range(len(words))])


@pytest.mark.parametrize("image", range(6))
def test_beam_one_is_greedy(image: int) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=6, length_penalty=0.7)
    g = greedy(make_step(), initial_state([image]), spec)[0]
    b = beam_search(make_step(), initial_state([image]), spec, beam=1)[0]
    assert g.ids == b.ids and g.finished and b.finished
    assert g.score == pytest.approx(b.score)
    np.testing.assert_allclose(g.alphas, b.alphas)


@pytest.mark.parametrize("penalty", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("image", range(4))
def test_wide_beam_equals_exhaustive_search(image: int, penalty: float) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=3, length_penalty=penalty)
    words, score = exhaustive(image, spec)
    hyp = beam_search(make_step(), initial_state([image]), spec, beam=30)[0]  # 30 > 3**3 prefixes
    assert hyp.finished
    assert hyp.ids == words
    assert hyp.score == pytest.approx(score, rel=1e-5)
    np.testing.assert_allclose(hyp.alphas, expected_alphas(image, words), rtol=1e-6)


def test_greedy_follows_the_argmax_and_reports_its_attention() -> None:
    hyp = greedy(make_step(), initial_state([3]), SPEC)[0]
    words: list[int] = []
    while True:
        logprobs, _ = _table(3, tuple(words), True)
        masked = SPEC.mask(logprobs[None], len(words))[0]
        nxt = int(masked.argmax())
        if nxt == 2:
            break
        words.append(nxt)
    assert hyp.ids == words
    np.testing.assert_allclose(hyp.alphas, expected_alphas(3, words), rtol=1e-6)


@pytest.mark.parametrize("beam", [1, 2, 4])
def test_no_special_token_is_ever_produced(beam: int) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=5)
    for hyp in beam_search(make_step(), initial_state(list(range(10))), spec, beam=beam):
        assert hyp.ids and all(i in WORDS for i in hyp.ids)
        assert len(hyp.ids) <= spec.max_len


@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_best_partial_caption_when_no_hypothesis_can_end(search: str) -> None:
    state = initial_state([0, 1])
    if search == "greedy":
        hyps = greedy(make_step(end_allowed=False), state, SPEC)
    else:
        hyps = beam_search(make_step(end_allowed=False), state, SPEC, beam=3)
    for image, hyp in enumerate(hyps):
        assert not hyp.finished
        assert len(hyp.ids) == SPEC.max_len
        assert np.isfinite(hyp.score)
        assert hyp.alphas.shape == (SPEC.max_len, L)
        np.testing.assert_allclose(hyp.alphas, expected_alphas(image, hyp.ids), rtol=1e-6)


@pytest.mark.parametrize("beam", [1, 3])
def test_batched_results_equal_one_at_a_time(beam: int) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=5)
    images = [0, 7, 3, 3, 9]
    together = beam_search(make_step(), initial_state(images), spec, beam=beam)
    for image, hyp in zip(images, together):
        alone = beam_search(make_step(), initial_state([image]), spec, beam=beam)[0]
        assert (hyp.ids, hyp.finished) == (alone.ids, alone.finished)
        assert hyp.score == pytest.approx(alone.score)
        np.testing.assert_allclose(hyp.alphas, alone.alphas)


def test_wider_beam_never_scores_worse_here() -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=3)
    for image in range(5):
        scores = [beam_search(make_step(), initial_state([image]), spec, beam=k)[0].score for k in (1, 30)]
        assert scores[1] >= scores[0] - 1e-9


@pytest.mark.parametrize("beam", [1, 3])
def test_finished_images_leave_the_batch_and_rows_are_image_major(beam: int) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=6)
    ids = [0, 7, 3, 9, 4, 5]  # the table's image ids, by batch index
    table_step = make_step()
    calls: list[tuple[list[int], int]] = []  # (images, rows per image) of each step

    def step(tokens: np.ndarray, state: dict[str, np.ndarray], images: np.ndarray):
        per = len(tokens) // len(images)
        assert len(tokens) == per * len(images) == len(state["prefix"])
        # Row r belongs to image images[r // per]: the state it carries says so.
        assert state["prefix"][:, 0].tolist() == [ids[i] for i in np.repeat(images, per)]
        calls.append((images.tolist(), per))
        return table_step(tokens, state, images)

    state = initial_state(ids)
    hyps = greedy(step, state, spec) if beam == 1 else beam_search(step, state, spec, beam=beam)
    for image, hyp in zip(ids, hyps):  # as if searched alone
        alone = beam_search(make_step(), initial_state([image]), spec, beam=beam)[0]
        assert (hyp.ids, hyp.finished) == (alone.ids, alone.finished) and hyp.score == pytest.approx(alone.score)
    # The first step computes one row per image (a beam's K rows are identical then), later ones K.
    assert calls[0] == (list(range(len(ids))), 1)
    assert all(per == beam for _, per in calls[1:])
    for (before, _), (after, _) in zip(calls, calls[1:]):
        assert set(after) <= set(before) and after == sorted(after)
    # Images finish at different steps here, so later steps compute fewer images.
    assert len(calls[-1][0]) < len(ids)


def test_no_repeat_ngram_blocks_a_repeated_trigram_in_greedy_and_beam() -> None:
    # A step table that loves the cycle 4 -> 5 -> 6 -> 4 ...: unblocked, "4 5 6 4 5 6 ..." repeats trigrams.
    v = 8

    def step(tokens: np.ndarray, state: dict, images: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray]:
        logits = np.full((len(tokens), v), -5.0)
        nxt = np.where(tokens == 1, 4, np.where(tokens == 6, 4, tokens + 1))
        logits[np.arange(len(tokens)), nxt % v] = 0.0
        logits[:, 7] = -1.0  # the runner-up word
        logits[:, 2] = -3.0  # <end>
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return logp, state, np.full((len(tokens), 2), 0.5)

    state = {"h": np.zeros((1, 1))}
    for n in (0, 3):
        spec = SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=9, no_repeat_ngram=n)
        for hyp in (greedy(step, state, spec)[0], beam_search(step, state, spec, beam=3)[0]):
            trigrams = [tuple(hyp.ids[i : i + 3]) for i in range(len(hyp.ids) - 2)]
            if n == 0:
                assert len(set(trigrams)) < len(trigrams)  # the table alone repeats
            else:
                assert len(set(trigrams)) == len(trigrams), hyp.ids


@pytest.mark.parametrize("beam", [1, 3])
def test_no_caption_ends_on_a_dangling_word(beam: int) -> None:
    # A table that wants "4 5 <end>": with 5 ("the", say) in no_end_after the caption must go on to 6.
    v = 7

    def step(tokens: np.ndarray, state: dict, images: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray]:
        logits = np.full((len(tokens), v), -6.0)
        logits[tokens == 1, 4] = 0.0  # <start> -> 4
        logits[tokens == 4, 5] = 0.0  # 4 -> 5
        logits[tokens == 5, 2] = 0.0  # 5 -> <end> (best) ...
        logits[tokens == 5, 6] = -1.0  # ... or 6
        logits[tokens == 6, 2] = 0.0  # 6 -> <end>
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return logp, state, np.full((len(tokens), 2), 0.5)

    state = {"h": np.zeros((1, 1))}
    search = (
        (lambda spec: greedy(step, state, spec)[0])
        if beam == 1
        else (lambda spec: beam_search(step, state, spec, beam=beam)[0])
    )
    free = SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=5)
    assert search(free).ids == [4, 5]
    assert search(SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=5, no_end_after=(5,))).ids == [4, 5, 6]
    # After max_len words <end> is forced, dangling or not: the search still ends.
    short = search(SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=2, no_end_after=(5,)))
    assert short.ids == [4, 5] and short.finished


@pytest.mark.parametrize("beam", [1, 2, 3])
def test_ties_go_to_the_lower_row_then_the_lower_word(beam: int) -> None:
    # Every word equally likely at every step: all captions of a length tie, and the lowest ids win.
    def step(tokens: np.ndarray, state: dict, images: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray]:
        logp = np.full((len(tokens), 7), np.log(0.3), dtype=np.float32)
        logp[:, 2] = np.log(0.1)  # <end>
        return logp, state, np.full((len(tokens), 2), 0.5, dtype=np.float32)

    spec = SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=2, length_penalty=0.0)
    state = {"h": np.zeros((3, 1))}
    hyps = greedy(step, state, spec) if beam == 1 else beam_search(step, state, spec, beam=beam)
    assert [h.ids for h in hyps] == [[4, 4]] * 3
