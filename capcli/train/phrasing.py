"""Phrasing no training sentence uses: a caption's trigrams, its start and end included, that the corpus lacks.

A caption whose every trigram some training sentence has reads as the corpus does ("A living room with a
couch.").  One with an unseen trigram is mostly a template gone wrong: "A living room is sitting on a bed."
("room is sitting"), "A man is standing in front of a bananas." ("a bananas <end>"), "A group of children
are playing in a blue." ("a blue <end>").  Self-critical training can take a penalty off such samples
(``capcli train-grounded --unseen-trigram-penalty``) or draw them with such words made unlikely
(``--sample-phrasing``, :class:`capcli.phrasing.PhraseRule`, which the search's
``--unseen-trigram-penalty`` uses too); ``benchmarks/unseen_trigrams.py`` counts them in a run's captions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from capcli.datasets import Split
from capcli.text import tokenize

Trigram = tuple[str, str, str]
START, END = "<start>", "<end>"


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
