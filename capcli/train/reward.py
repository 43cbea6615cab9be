"""CIDEr-D as a training reward: sampled captions scored against their image's references.

The same formula as pycocoevalcap's ``CiderScorer`` (n-grams 1..4, tf-idf
vectors, clipped cosine, Gaussian length penalty with sigma 6, x10), with one
difference that matters for training: the document frequencies come from the
whole training corpus, computed once, not from the handful of images in a batch
(``CiderScorer`` recomputes them, and the log corpus size, on every call).
Reference vectors are likewise built once per image.

The end of a caption counts as a word (``END``, appended to every reference
and hypothesis, as self-critical training code commonly scores token ids up to
and including <end>).  Without it a sampled caption that stops mid-phrase
("a dog runs in the") loses nothing for its missing ending, and self-critical
training learns to cut captions short: a fifth of the dev captions of an
H100 run ended in "a" or "the".  With it, "in the <end>" is an n-gram no
reference holds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

N = 4  # n-gram orders 1..N
SIGMA = 6.0  # CIDEr-D's length penalty width
END = "<end>"  # no tokenised word looks like this


@dataclass
class _Vector:
    weights: list[dict[tuple[str, ...], float]]  # per order n: n-gram -> tf-idf
    norms: list[float]  # per order n
    length: int  # bigrams, as CiderScorer counts length (words - 1)


def _ngrams(words: Sequence[str]) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for n in range(1, N + 1) for i in range(len(words) - n + 1))


@dataclass
class _Corpus:
    """The images a reference n-gram's document frequency counts over."""

    images: int = 0
    document_frequency: Counter[tuple[str, ...]] = field(default_factory=Counter)

    def add(self, references: Sequence[Counter[tuple[str, ...]]]) -> None:
        self.images += 1
        self.document_frequency.update({gram for ref in references for gram in ref})


class CiderD:
    """CIDEr-D against fixed references, with document frequencies from the references themselves.

    ``references[i]`` holds image ``i``'s reference captions as word lists.
    ``mark_end=False`` scores exactly like pycocoevalcap's Cider (no ``END``).
    ``groups[i]`` (optional) names image ``i``'s data set: each data set then has its own document
    frequencies and image count, as each is scored on its own at evaluation; without it all images
    form one corpus.
    """

    def __init__(
        self,
        references: Sequence[Sequence[Sequence[str]]],
        mark_end: bool = True,
        groups: Sequence[Hashable] | None = None,
    ) -> None:
        self.tail = [END] if mark_end else []
        counts = [[_ngrams([*ref, *self.tail]) for ref in refs] for refs in references]
        groups = [None] * len(references) if groups is None else list(groups)
        corpora = {group: _Corpus() for group in groups}
        for image, group in zip(counts, groups):
            corpora[group].add(image)
        self._refs = [[self._vector(c, corpora[g]) for c in image] for image, g in zip(counts, groups)]
        self._corpus = [corpora[g] for g in groups]

    @staticmethod
    def _vector(counts: Counter[tuple[str, ...]], corpus: _Corpus) -> _Vector:
        weights: list[dict[tuple[str, ...], float]] = [{} for _ in range(N)]
        log_images = math.log(max(1, corpus.images))
        for gram, tf in counts.items():
            weights[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, corpus.document_frequency[gram])))
        norms = [math.sqrt(sum(w * w for w in order.values())) for order in weights]
        return _Vector(weights, norms, sum(counts[g] for g in weights[1]))

    def score(self, image: int, words: Sequence[str]) -> float:
        """CIDEr-D of one caption (a word list) for image ``image``."""
        hyp = self._vector(_ngrams([*words, *self.tail]), self._corpus[image])
        refs = self._refs[image]
        total = 0.0
        for ref in refs:
            penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * SIGMA**2))
            for n in range(N):
                if hyp.norms[n] == 0 or ref.norms[n] == 0:
                    continue
                ref_weights = ref.weights[n]
                dot = sum(min(w, ref_weights.get(g, 0.0)) * ref_weights.get(g, 0.0) for g, w in hyp.weights[n].items())
                total += penalty * dot / (hyp.norms[n] * ref.norms[n])
        return 10.0 * total / N / len(refs)

    def scores(self, images: Sequence[int], captions: Sequence[Sequence[str]]) -> np.ndarray:
        """CIDEr-D of ``captions[j]`` for image ``images[j]``: (len(captions),) float32."""
        return np.array([self.score(i, c) for i, c in zip(images, captions)], dtype=np.float32)
