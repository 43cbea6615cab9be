"""Phrasing no training sentence uses: a caption's trigrams, its start and end included, that the corpus lacks.

A caption whose every trigram some training sentence has reads as the corpus does ("A living room with a
couch.").  One with an unseen trigram is mostly a template gone wrong: "A living room is sitting on a bed."
("room is sitting"), "A man is standing in front of a bananas." ("a bananas <end>"), "A group of children
are playing in a blue." ("a blue <end>").  Self-critical training can take a penalty off such samples
(``capcli train-grounded --unseen-trigram-penalty``) or draw them with such words made unlikely
(``--sample-phrasing``, :class:`PhrasePenalty`); ``benchmarks/unseen_trigrams.py`` counts them in a run's
captions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from capcli.datasets import Split
from capcli.text import Vocab, tokenize

Trigram = tuple[str, str, str]
START, END = "<start>", "<end>"
NO_WORD = -1  # the word before <start>
NOTHING = np.zeros(0, dtype=np.int64)


def training_text(paired: Iterable[Split], text: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Every training sentence, tokenised: the paired splits' captions, then the caption-only sentences."""
    sentences = [tokenize(c) for split in paired for s in split.samples for c in s.captions]
    return sentences + [tokenize(c) for captions in text.values() for c in captions]


def trigrams(words: Sequence[str]) -> list[Trigram]:
    """A caption's trigrams, with its start and end: "a dog" -> (<start>, a, dog), (a, dog, <end>)."""
    padded = [START, *words, END]
    return list(zip(padded, padded[1:], padded[2:]))


def seen_trigrams(sentences: Iterable[Sequence[str]]) -> frozenset[Trigram]:
    return frozenset(t for words in sentences for t in trigrams(words))


def unseen_trigrams(words: Sequence[str], seen: frozenset[Trigram]) -> list[Trigram]:
    """The trigrams of ``words`` that no sentence behind ``seen`` has, in order."""
    return [t for t in trigrams(words) if t not in seen]


@dataclass
class PhrasePenalty:
    """A penalty on each next word that would make a trigram no training sentence has.

    ``follow`` maps the ids of a caption's last two words (``NO_WORD`` and <start> before its first word)
    to the ids that follow them in some training sentence; every other word, <end> included, costs
    ``weight`` in log-probability.
    """

    follow: dict[tuple[int, int], np.ndarray]
    weight: float

    @classmethod
    def build(cls, sentences: Iterable[Sequence[str]], vocab: Vocab, weight: float) -> PhrasePenalty:
        ids = {word: i for i, word in enumerate(vocab.tokens)}
        follow: dict[tuple[int, int], set[int]] = {}
        for a, b, c in seen_trigrams(sentences):
            if a in ids and b in ids and c in ids:
                follow.setdefault((ids[a], ids[b]), set()).add(ids[c])
                if a == START:  # the caption's first word
                    follow.setdefault((NO_WORD, ids[a]), set()).add(ids[b])
        return cls({pair: np.fromiter(sorted(c), dtype=np.int64) for pair, c in follow.items()}, weight)

    def __call__(self, before: np.ndarray, last: np.ndarray, vocab_size: int) -> np.ndarray:
        """Rows' two last word ids (N,), (N,) -> (N, V) float32 penalties."""
        out = np.full((len(last), vocab_size), self.weight, dtype=np.float32)  # (N, V)
        for row, pair in enumerate(zip(before.tolist(), last.tolist())):
            out[row, self.follow.get(pair, NOTHING)] = 0.0
        return out
