from __future__ import annotations

import pytest

from capcli.text import SPECIALS, Vocab, detokenize, tokenize


def test_tokenize_lowercases_and_drops_punctuation() -> None:
    assert tokenize("A dog's ball , in the GRASS .") == ["a", "dog's", "ball", "in", "the", "grass"]
    assert tokenize("Two 3-year-olds") == ["two", "3", "year", "olds"]


def test_detokenize_renders_a_sentence() -> None:
    assert detokenize(["a", "dog", "runs", "through", "the", "grass"]) == "A dog runs through the grass."
    assert detokenize([]) == ""


def test_vocab_threshold_order_and_specials() -> None:
    captions = [["a", "dog"], ["a", "cat"], ["a", "dog"], ["the", "dog"]]
    vocab = Vocab.build(captions, min_count=2)
    assert vocab.tokens == SPECIALS + ("a", "dog")
    assert vocab.encode(["a", "cat", "dog"]) == [4, vocab.unk_id, 5]
    # decode stops at <end> and drops every special token
    assert vocab.decode([vocab.start_id, 4, vocab.unk_id, 5, vocab.end_id, 4]) == ["a", "dog"]


def test_vocab_must_start_with_specials() -> None:
    with pytest.raises(ValueError):
        Vocab(("a", "b"))
