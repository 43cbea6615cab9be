"""Concepts for captions without photos: which tagger classes a sentence's words point to.

A grounded decoder reads the tagger's top classes (see :mod:`capcli.train.tagger`).
A caption-only sentence ("a kitchen with a stainless steel refrigerator") has
no photo to tag, so its classes are inferred from its words, with two bridges
between words and classes that the data here offers:

- **co-occurrence** on the paired photos: the lift of class ``k`` for word
  ``w`` is how much more probable the tagger finds ``k`` on the photos whose
  captions hold ``w`` than on all photos (smoothed towards 1 for rare words);
- **names**: a word that is a class name or the last word of one ("pizza",
  "refrigerator"; "elephant" for "Indian elephant", "toilet" for "toilet
  seat", see :func:`name_index`) gets a fixed boost for that class.

A sentence's class scores are the sums of its content words' log-lifts (a
naive-Bayes reading), and its top ``k`` classes become its concept.  Their
weights are drawn from the tagger's real profiles (the sorted top-``k``
probabilities of a random paired photo), so caption-only and photo concepts
look alike to the decoder.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from capcli.hallucination import OBJECTS

# Words that say nothing about what is in the picture.
STOPWORDS = frozenset(
    "a an the of in on at to with and or is are be being was were its it this that these there their his her "
    "some two three four several many one other each while as by for from into near next up down out over under "
    "very has have who which what while back top front side".split()
)
OBJECT_WORDS = frozenset(w for words in OBJECTS.values() for w in words if " " not in w)
NAME_BOOST = 3.0  # added to a class's log-score per word that names it (about a 20x lift)


def content_words(words: Sequence[str]) -> list[str]:
    return [w for w in words if w not in STOPWORDS and not w.isdigit() and len(w) > 1]


def singular(word: str) -> str:
    """A crude singular, enough to match class names ("elephants" -> "elephant", "buses" -> "bus")."""
    for suffix, repl in (("ies", "y"), ("ches", "ch"), ("shes", "sh"), ("xes", "x"), ("ses", "s"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2 and not word.endswith("ss"):
            return word[: -len(suffix)] + repl
    return word


def name_index(labels: Sequence[str]) -> dict[str, list[int]]:
    """Word -> the classes it names: a one-word name, a name's last word ("elephant" for "Indian
    elephant"), or another word of the name that is a common object ("toilet" for "toilet seat"; not
    "golden" for "golden retriever")."""
    index: dict[str, list[int]] = {}
    for k, label in enumerate(labels):
        words = re.findall(r"[a-z]+", label.lower())
        for word in {w for w in words if w == words[-1] or w in OBJECT_WORDS}:
            index.setdefault(word, []).append(k)
    return index


@dataclass
class ConceptModel:
    """Word -> class log-lift table learned from paired photos, plus the class names."""

    words: dict[str, int]  # word -> row of ``log_lift``
    log_lift: np.ndarray  # (W, K) float32
    names: dict[str, list[int]]
    profiles: np.ndarray  # (P, k) sorted top-k probabilities of paired photos, each row summing to 1

    @classmethod
    def fit(
        cls,
        probs: np.ndarray,
        captions: Sequence[Sequence[Sequence[str]]],
        labels: Sequence[str],
        k: int,
        smoothing: float = 5.0,
        min_photos: int = 2,
    ) -> ConceptModel:
        """``probs`` (N, K): the tagger on N paired photos; ``captions[i]``: photo i's tokenised captions."""
        probs = probs.astype(np.float64)
        prior = probs.mean(axis=0) + 1e-8  # (K,)
        photos_of: dict[str, list[int]] = {}
        for i, caps in enumerate(captions):
            for w in set(content_words([w for c in caps for w in c])):
                photos_of.setdefault(singular(w), []).append(i)
        kept = sorted(w for w, rows in photos_of.items() if len(rows) >= min_photos)
        table = np.zeros((len(kept), len(prior)), np.float32)
        for r, w in enumerate(kept):
            rows = photos_of[w]
            mean = (probs[rows].sum(axis=0) + smoothing * prior) / (len(rows) + smoothing)  # (K,)
            table[r] = np.log(mean / prior)
        top = -np.sort(-probs, axis=1)[:, :k]  # (N, k)
        return cls({w: r for r, w in enumerate(kept)}, table, name_index(labels), top / top.sum(1, keepdims=True))

    def scores(self, words: Sequence[str]) -> np.ndarray:
        """Class scores (K,) of a sentence (or several sentences' words together)."""
        score = np.zeros(self.log_lift.shape[1], np.float32)
        for w in {singular(w) for w in content_words(words)}:
            row = self.words.get(w)
            if row is not None:
                score += self.log_lift[row]
            for klass in self.names.get(w, ()):
                score[klass] += NAME_BOOST
        return score

    def concept(self, words: Sequence[str], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(classes (k,) int64, weights (k,) float32) for a sentence: its top classes, a real profile's weights."""
        k = self.profiles.shape[1]
        classes = np.argsort(-self.scores(words), kind="stable")[:k]
        weights = self.profiles[rng.integers(len(self.profiles))]
        return classes.astype(np.int64), weights.astype(np.float32)


def top_concepts(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The tagger's top ``k`` classes (N, k) and their renormalised probabilities (N, k), as the decoder reads them."""
    classes = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(probs, classes, axis=1)
    return classes.astype(np.int64), (top / top.sum(axis=1, keepdims=True)).astype(np.float32)
