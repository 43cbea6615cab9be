"""Caption text: tokenising for training, the vocabulary, detokenising for output.

Pure Python on purpose: the runtime detokenises with exactly the rules that
training tokenised with, without importing torch.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIALS = (PAD, START, END, UNK)

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def tokenize(caption: str) -> list[str]:
    """Lower-case words; punctuation dropped ("A dog's ball." -> a, dog's, ball)."""
    return _WORD.findall(caption.lower())


def detokenize(words: Sequence[str]) -> str:
    """Render words as a sentence: capitalised, single-spaced, full stop."""
    if not words:
        return ""
    text = " ".join(words)
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class Vocab:
    """Word <-> id mapping; ids 0..3 are the special tokens in SPECIALS order."""

    tokens: tuple[str, ...]

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"vocabulary must start with {SPECIALS}")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    pad_id = 0
    start_id = 1
    end_id = 2
    unk_id = 3

    @classmethod
    def build(cls, captions: Iterable[Sequence[str]], min_count: int = 5) -> Vocab:
        """Words seen at least ``min_count`` times, most frequent first (ties by word)."""
        counts = Counter(w for words in captions for w in words)
        kept = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + tuple(kept))

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, words: Sequence[str]) -> list[int]:
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        return [index.get(w, self.unk_id) for w in words]

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Ids to words, stopping at <end> and dropping every special token."""
        words = []
        for i in ids:
            if i == self.end_id:
                break
            if i >= len(SPECIALS):
                words.append(self.tokens[i])
        return words

    def special_ids(self) -> list[int]:
        return list(range(len(SPECIALS)))
