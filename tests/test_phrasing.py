"""The trigram table of a model's training text (capcli.phrasing): built, stored, read back, looked up."""

from __future__ import annotations

import io

import numpy as np
import pytest

from capcli.phrasing import PhraseRule, last_two, read_table, table_bytes, trigram_table
from capcli.text import Vocab

VOCAB = Vocab(("<pad>", "<start>", "<end>", "<unk>", *"a dog cat runs sits".split()))
A, DOG, CAT, RUNS, SITS = VOCAB.encode("a dog cat runs sits".split())
S, E = VOCAB.start_id, VOCAB.end_id


def test_the_table_reads_each_sentence_from_two_starts_to_its_end_without_unknown_words() -> None:
    table = trigram_table([["a", "dog", "runs"], ["a", "zebra", "runs"], ["dog"], [], ["a", "dog", "runs"]], VOCAB)
    assert table.tolist() == sorted(
        [[S, S, A], [S, A, DOG], [A, DOG, RUNS], [DOG, RUNS, E], [S, S, DOG], [S, DOG, E]]
    )  # "zebra" is no word of the vocabulary: none of its trigrams; the empty sentence gives none


def test_the_table_round_trips_through_its_file_bytes_as_16_bit_ids() -> None:
    table = trigram_table([["a", "dog", "runs"], ["a", "cat", "sits"]], VOCAB)
    data = table_bytes(table)
    assert np.load(io.BytesIO(data)).dtype == np.uint16
    np.testing.assert_array_equal(read_table(data, len(VOCAB)), table)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not an array", "not a .npy array"),
        (table_bytes(np.zeros((4, 2), dtype=np.int64)), r"expected \(M, 3\) integer word ids"),
        (table_bytes(np.array([[1, 1, 99]])), "below the vocabulary size 9"),
        (table_bytes(np.array([[1, 4, 5], [1, 1, 4]])), "distinct and sorted"),
        (table_bytes(np.array([[1, 1, 4], [1, 1, 4]])), "distinct and sorted"),
    ],
)
def test_a_bad_table_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        read_table(data, len(VOCAB))


def test_the_rule_spares_exactly_the_words_the_table_has_after_each_rows_two_last_words() -> None:
    rng = np.random.default_rng(0)
    sentences = [list(rng.choice(["a", "dog", "cat", "runs", "sits"], size=rng.integers(1, 6))) for _ in range(30)]
    table = trigram_table(sentences, VOCAB)
    seen = {tuple(row) for row in table.tolist()}
    before = rng.choice([S, A, DOG, CAT, RUNS, SITS], size=50)
    last = rng.choice([S, A, DOG, CAT, RUNS, SITS], size=50)
    out = PhraseRule(table, 1.5)(before, last, len(VOCAB))  # (50, V)
    expected = [[0.0 if (b, c, w) in seen else 1.5 for w in range(len(VOCAB))] for b, c in zip(before, last)]
    np.testing.assert_array_equal(out, np.array(expected, dtype=np.float32))


def test_last_two_stands_start_in_before_the_first_word() -> None:
    for history, expected in (
        (np.zeros((2, 0), dtype=np.int64), ([S, S], [S, S])),
        (np.array([[A], [DOG]]), ([S, S], [A, DOG])),
        (np.array([[A, DOG, RUNS], [CAT, SITS, A]]), ([DOG, SITS], [RUNS, A])),
    ):
        before, last = last_two(history, S)
        assert (before.tolist(), last.tolist()) == expected
