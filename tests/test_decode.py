"""Greedy and beam search on hand-made step tables whose next-token
distribution depends on the whole prefix (carried in the state, so the
back-pointer reordering is exercised)."""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest

from capcli.decode import (
    REPEATABLE_WORDS,
    Decoding,
    Sampling,
    SearchSpec,
    beam_search,
    beam_search_n_best,
    draw_tokens,
    greedy,
    repeated_words,
    sample,
    say_once_ids,
    search,
)
from capcli.errors import UsageError
from capcli.phrasing import PhraseRule, trigram_table
from capcli.text import Vocab

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


def exhaustive(
    image: int, spec: SearchSpec, cost: Callable[[tuple[int, ...]], float] = lambda ids: 0.0
) -> tuple[list[int], float]:
    """Best finished caption by scoring every allowed sequence; ``cost``: taken off each token (given the
    ids so far, <start> <start> first, and the token) of its log-probability."""
    best: tuple[list[int], float] = ([], -np.inf)
    for n in range(1, spec.max_len + 1):
        for words in itertools.product(WORDS, repeat=n):
            total = 0.0
            padded = (1, 1, *words, 2)
            for t in range(n + 1):
                logprobs, _ = _table(image, tuple(words[:t]), True)
                total += float(logprobs[words[t]] if t < n else logprobs[2]) - cost(padded[: t + 3])
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


@pytest.mark.parametrize("beam", [1, 3])
def test_a_word_said_once_is_not_said_again(beam: int) -> None:
    # A table that wants "4 5 4" ("plate of plate") over "4 5 6"; 5 ("of") may repeat: "4 5 4 5 6".
    v = 7

    def step(tokens: np.ndarray, state: dict, images: np.ndarray) -> tuple[np.ndarray, dict, np.ndarray]:
        logits = np.full((len(tokens), v), -6.0)
        logits[tokens == 1, 4] = 0.0  # <start> -> 4
        logits[tokens == 4, 5] = 0.0  # 4 -> 5
        logits[tokens == 5, 4] = 0.0  # 5 -> 4 (best) ...
        logits[tokens == 5, 6] = -2.0  # ... or 6
        logits[tokens == 4, 2] = -0.5  # 4 -> <end>
        logits[tokens == 6, 2] = 0.0  # 6 -> <end>
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return logp, state, np.full((len(tokens), 2), 0.5)

    state = {"h": np.zeros((2, 1))}
    free = SearchSpec(start_id=1, end_id=2, banned=(0, 1, 3), max_len=3, min_len=3)
    said = replace(free, say_once=(4, 6))
    for spec, expected in ((free, [4, 5, 4]), (said, [4, 5, 6])):
        found = greedy(step, state, spec) if beam == 1 else beam_search(step, state, spec, beam=beam)
        assert [h.ids for h in found] == [expected, expected]
    # A prefix is forced even when it says a word twice; the words after it keep to the rule.
    prefixed = beam_search(step, state, replace(said, prefix=(4, 5, 4), max_len=5, min_len=1), beam=beam)[0]
    assert prefixed.ids == [4, 5, 4, 5, 6]


def test_no_repeated_words_says_each_word_once_but_the_repeatable_ones() -> None:
    vocab = Vocab.build([["a", "plate", "of", "food", "on", "a", "plate", "red", "red"]], min_count=1)
    once = {vocab.tokens[i] for i in say_once_ids(vocab)}
    assert once == {"plate", "food", "red"} and not once & REPEATABLE_WORDS
    assert set(Decoding(no_repeated_words=True).spec(vocab, 9).say_once) == set(say_once_ids(vocab))
    assert Decoding().spec(vocab, 9).say_once == SearchSpec.runtime(vocab, 9).say_once == say_once_ids(vocab)
    assert not Decoding(no_repeated_words=False).spec(vocab, 9).say_once
    assert repeated_words("a plate of food on a plate".split()) == ["plate"]
    assert repeated_words("a man and a woman in a red shirt and a red hat".split()) == ["red"]


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


# --- issue 21: decoding controls -------------------------------------------------------------------


def all_finished(image: int, spec: SearchSpec) -> list[tuple[list[int], float]]:
    """Every allowed finished caption with its score, best first (ties: shorter, then lower ids)."""
    out = []
    for n in range(spec.min_len, spec.max_len + 1):
        for words in itertools.product(WORDS, repeat=n):
            total = sum(_table(image, tuple(words[:t]), True)[0][words[t]] for t in range(n))
            total += _table(image, words, True)[0][2]
            out.append((list(words), float(total) / (n + 1) ** spec.length_penalty))
    return sorted(out, key=lambda c: -c[1])


@pytest.mark.parametrize("beam", [1, 3])
def test_min_len_holds_back_the_end_token(beam: int) -> None:
    for min_len in (1, 3, 5):
        spec = SearchSpec(1, 2, (0, 1, 3), max_len=5, min_len=min_len)
        for hyp in search(make_step(), initial_state(list(range(8))), spec, beam, keys=range(8)):
            assert hyp[0].finished and len(hyp[0].ids) >= min_len


@pytest.mark.parametrize("image", range(4))
def test_n_best_of_a_wide_beam_are_the_exhaustive_top_n(image: int) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=3, n_best=5)
    found = beam_search_n_best(make_step(), initial_state([image]), spec, beam=30)[0]  # 30 > 3**3 prefixes
    expected = all_finished(image, spec)[:5]
    assert [h.ids for h in found] == [words for words, _ in expected]
    assert [h.score for h in found] == pytest.approx([score for _, score in expected], rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_n_best_are_distinct_ordered_and_led_by_the_best(n: int) -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=5, n_best=n)
    best = beam_search(make_step(), initial_state(list(range(10))), replace(spec, n_best=1), beam=3)
    for one, found in zip(best, beam_search_n_best(make_step(), initial_state(list(range(10))), spec, beam=3)):
        assert len(found) == n and len({tuple(h.ids) for h in found}) == n
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True)
        assert (found[0].ids, found[0].score) == (one.ids, one.score)
    with pytest.raises(ValueError):
        beam_search_n_best(make_step(), initial_state([0]), replace(spec, n_best=4), beam=3)


@pytest.mark.parametrize("beam", [1, 3])
def test_prefix_words_come_first_even_when_they_repeat(beam: int) -> None:
    # No word twice (1-grams), yet the prefix repeats 5; min_len makes the search go on after it.
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=6, no_repeat_ngram=1, prefix=(5, 5), min_len=4)
    for [hyp] in search(make_step(), initial_state(list(range(6))), spec, beam, keys=range(6)):
        assert hyp.finished and hyp.ids[:2] == [5, 5] and sorted(hyp.ids[2:]) == [4, 6]  # the rule holds after it
    sampled = sample(make_step(), initial_state([0, 1]), replace(spec, sampling=Sampling(seed=3)), keys=[0, 1])
    assert all(h.ids[:2] == [5, 5] for h in sampled)


def test_sampling_depends_on_the_key_not_the_batch() -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=6, sampling=Sampling(temperature=1.5, seed=7))
    images = [0, 7, 3, 3, 9, 2, 5, 1]
    together = sample(make_step(), initial_state(images), spec, keys=range(100, 108))
    for i, image in enumerate(images):
        alone = sample(make_step(), initial_state([image]), spec, keys=[100 + i])[0]
        assert (alone.ids, alone.score) == (together[i].ids, together[i].score)
    reordered = sample(make_step(), initial_state(images[::-1]), spec, keys=range(107, 99, -1))
    assert [h.ids for h in reordered[::-1]] == [h.ids for h in together]
    other_seed = sample(make_step(), initial_state(images), replace(spec, sampling=Sampling(1.5, seed=8)), range(8))
    assert [h.ids for h in other_seed] != [h.ids for h in together]


def test_a_tiny_nucleus_is_greedy() -> None:
    spec = SearchSpec(1, 2, (0, 1, 3), max_len=5)
    greedy_hyps = greedy(make_step(), initial_state(list(range(6))), spec)
    nucleus = replace(spec, sampling=Sampling(temperature=2.0, top_p=1e-9, seed=1))
    for g, s in zip(greedy_hyps, sample(make_step(), initial_state(list(range(6))), nucleus, keys=range(6))):
        assert (g.ids, g.score) == (s.ids, s.score)


def test_draw_tokens_follows_the_distribution_and_its_nucleus() -> None:
    probs = np.array([0.1, 0.0, 0.6, 0.3])
    with np.errstate(divide="ignore"):
        scores = np.log(np.tile(probs, (4000, 1)))  # log(0) = -inf: forbidden
    uniform = (np.arange(4000) + 0.5) / 4000
    counts = np.bincount(draw_tokens(scores, uniform, 1.0, 1.0), minlength=4) / 4000
    np.testing.assert_allclose(counts, probs, atol=1e-3)
    nucleus = np.bincount(draw_tokens(scores, uniform, 1.0, 0.8), minlength=4) / 4000  # 0.6 + 0.3 reach 0.8
    np.testing.assert_allclose(nucleus, [0.0, 0.0, 2 / 3, 1 / 3], atol=1e-3)
    stuck = draw_tokens(np.full((1, 4), -np.inf), np.array([0.5]), 1.0, 1.0)
    assert stuck.shape == (1,)


def test_the_spec_knows_whether_it_keeps_to_the_standard_rules() -> None:
    vocab = Vocab.build([["a", "dog"]], min_count=1)
    standard = Decoding(
        beam=5, max_len=9, min_len=3, length_penalty=1.0, allow_dangling_end=True, no_repeated_words=True
    ).spec(vocab, 20)
    assert SearchSpec.runtime(vocab, 20).graph_compatible and standard.graph_compatible
    for changed in (
        Decoding(no_repeat_ngram=0),
        Decoding(beam=2, num_captions=2),
        Decoding(sampling=Sampling()),
        Decoding(prefix="a dog"),
    ):
        assert not changed.spec(vocab, 20).graph_compatible
    table = trigram_table([["a", "dog"]], vocab)
    assert not Decoding(unseen_trigram_penalty=3).spec(vocab, 20, table).graph_compatible
    assert Decoding().spec(vocab, 20, table).graph_compatible  # a table alone asks for nothing


def test_decoding_checks_its_options() -> None:
    for wrong, words in (
        (dict(num_captions=4), "--num-captions 4 is more than the beam"),
        (dict(num_captions=2, beam=2, sampling=Sampling()), "does not go with --sample"),
        (dict(sampling=Sampling(temperature=0)), "--temperature"),
        (dict(sampling=Sampling(top_p=1.5)), "--top-p"),
        (dict(min_len=5, max_len=4), "--min-len"),
        (dict(unseen_trigram_penalty=-1.0), "--unseen-trigram-penalty must be at least 0"),
    ):
        with pytest.raises(UsageError, match=words):
            Decoding(**wrong)


def test_decoding_spec_names_prefix_words_outside_the_vocabulary() -> None:
    vocab = Vocab.build([["a", "photo", "of", "dog"]] * 2, min_count=1)
    spec = Decoding(prefix="A photo of", min_len=2).spec(vocab, max_len=9)
    assert vocab.decode(spec.prefix) == ["a", "photo", "of"] and spec.min_len == 2 and spec.max_len == 9
    assert Decoding().spec(vocab, 9) == SearchSpec.runtime(vocab, 9)
    with pytest.raises(UsageError, match="'zebra', 'xylophone'"):
        Decoding(prefix="a zebra of xylophone").spec(vocab, 9)
    with pytest.raises(UsageError, match="longest caption"):
        Decoding(prefix="a photo of a dog").spec(vocab, 4)


# --- a penalty on phrasing no training sentence uses ------------------------------------------------------------

# The training text's trigrams as ids, each sentence read as <start> <start> ... <end>: "4 5 6", "5 4", "6".
PHRASES = np.array(
    sorted({(1, 1, 4), (1, 4, 5), (4, 5, 6), (5, 6, 2), (1, 1, 5), (1, 5, 4), (5, 4, 2), (1, 1, 6), (1, 6, 2)})
)


@pytest.mark.parametrize("weight", [0.5, 2.0])
@pytest.mark.parametrize("image", range(4))
def test_a_wide_beam_under_a_phrase_rule_is_the_exhaustive_search_with_its_cost(image: int, weight: float) -> None:
    seen = {tuple(row) for row in PHRASES.tolist()}
    spec = replace(SPEC, phrasing=PhraseRule(PHRASES, weight))
    words, score = exhaustive(image, spec, lambda ids: 0.0 if ids[-3:] in seen else weight)
    hyp = beam_search(make_step(), initial_state([image]), spec, beam=30)[0]
    assert hyp.ids == words and hyp.score == pytest.approx(score, rel=1e-5)  # the score keeps the penalty


@pytest.mark.parametrize("beam", [1, 3])
def test_a_heavy_phrase_rule_leaves_only_the_training_phrasing(beam: int) -> None:
    spec = replace(SPEC, phrasing=PhraseRule(PHRASES, 100.0))
    for hyp in beam_search(make_step(), initial_state(list(range(8))), spec, beam=beam):
        assert hyp.ids in ([4, 5, 6], [5, 4], [6])
    free = beam_search(make_step(), initial_state(list(range(8))), SPEC, beam=beam)
    assert any(h.ids not in ([4, 5, 6], [5, 4], [6]) for h in free)  # the random tables want other captions


def test_the_phrase_rule_needs_the_models_table() -> None:
    vocab = Vocab.build([["a", "dog", "runs"]], min_count=1)
    table = trigram_table([["a", "dog", "runs"]], vocab)
    spec = Decoding(unseen_trigram_penalty=3.0).spec(vocab, 9, table)
    assert spec.phrasing is not None and spec.phrasing.weight == 3.0
    assert Decoding().spec(vocab, 9, table).phrasing is None
    with pytest.raises(UsageError, match="no trigram table"):
        Decoding(unseen_trigram_penalty=3.0).spec(vocab, 9)
