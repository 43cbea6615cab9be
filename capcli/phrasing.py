"""The trigram table: which word may follow two others, as the training sentences have it.

A caption whose every trigram, start and end included, some training sentence has reads as the corpus
does ("A living room with a bed."); one with a trigram the corpus lacks is mostly a template gone wrong
("A living room is sitting on a bed.": "room is sitting"; "... in front of a bananas.": "a bananas <end>").
:class:`PhraseRule` takes a weight off the log-probability of every next word that would make such a
trigram: the search's ``--unseen-trigram-penalty`` (its table ships in a bundle as ``trigrams.npy``, which
``capcli export --trigrams-from`` writes) and the sampler of ``capcli train-grounded --sample-phrasing``.

The table holds word ids, each sentence read as ``<start> <start> w1 .. wn <end>``: the pair
``(<start>, <start>)`` is followed by the sentences' first words.  Trigrams with a word outside the
vocabulary are left out (such a word is never said).
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from capcli.text import Vocab


def trigram_table(sentences: Iterable[Sequence[str]], vocab: Vocab) -> np.ndarray:
    """(M, 3) the distinct trigrams of the tokenised ``sentences`` as ``vocab`` ids, sorted by row."""
    found: set[tuple[int, int, int]] = set()
    for words in sentences:
        if not words:
            continue
        ids = [vocab.start_id, vocab.start_id, *vocab.encode(words), vocab.end_id]
        found.update(zip(ids, ids[1:], ids[2:]))
    rows = sorted(t for t in found if vocab.unk_id not in t)
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def table_bytes(table: np.ndarray) -> bytes:
    """The ``.npy`` bytes of a table: uint16 ids while the vocabulary fits them (a couple of MB)."""
    buffer = io.BytesIO()
    np.save(buffer, table.astype(np.uint16 if table.size == 0 or table.max() < 2**16 else np.int32))
    return buffer.getvalue()


def read_table(data: bytes, vocab_size: int) -> np.ndarray:
    """A table from its ``.npy`` bytes, (M, 3) int64; ValueError saying what is wrong with it."""
    try:
        table = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"not a .npy array ({exc})") from None
    if table.ndim != 2 or table.shape[1] != 3 or table.dtype.kind not in "iu":
        raise ValueError(f"expected (M, 3) integer word ids, found {table.dtype} {table.shape}")
    table = table.astype(np.int64)
    if table.size and (table.min() < 0 or table.max() >= vocab_size):
        raise ValueError(f"word ids must be below the vocabulary size {vocab_size}")
    step = np.sign(table[1:] - table[:-1])  # (M-1, 3): each row against the one before, column by column
    first = np.where(step[:, 0] != 0, step[:, 0], np.where(step[:, 1] != 0, step[:, 1], step[:, 2]))  # (M-1,)
    if not (first > 0).all():  # checked, not sorted here: sorting would cost every run ~50 ms
        raise ValueError("rows must be distinct and sorted (as trigram_table writes them)")
    return table


def _pair_keys(before: np.ndarray, last: np.ndarray) -> np.ndarray:
    return (np.asarray(before, dtype=np.int64) << 32) | np.asarray(last, dtype=np.int64)


@dataclass(frozen=True, eq=False)  # an array field: compared (and hashed) as an object
class PhraseRule:
    """``weight`` off the log-probability of each next word that would make a trigram the table lacks."""

    table: np.ndarray  # (M, 3) word ids, sorted by row (read_table, trigram_table)
    weight: float
    _keys: np.ndarray = field(init=False, repr=False, compare=False)  # (M,) the pair of each row, sorted

    def __post_init__(self) -> None:
        object.__setattr__(self, "_keys", _pair_keys(self.table[:, 0], self.table[:, 1]))

    @classmethod
    def from_sentences(cls, sentences: Iterable[Sequence[str]], vocab: Vocab, weight: float) -> PhraseRule:
        return cls(trigram_table(sentences, vocab), weight)

    def __call__(self, before: np.ndarray, last: np.ndarray, vocab_size: int) -> np.ndarray:
        """Rows' two last word ids (N,), (N,) (<start> for the words before the first) -> (N, V) float32
        penalties: 0 for the words that follow the pair in the table, ``weight`` for every other."""
        pairs = _pair_keys(before, last)  # (N,)
        lo = np.searchsorted(self._keys, pairs, side="left")  # (N,) each pair's rows: lo .. hi
        counts = np.searchsorted(self._keys, pairs, side="right") - lo  # (N,)
        rows = np.repeat(np.arange(len(pairs)), counts)  # (S,) S: the spared words of all rows
        offsets = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)  # (S,) position in its pair
        out = np.full((len(pairs), vocab_size), self.weight, dtype=np.float32)  # (N, V)
        out[rows, self.table[np.repeat(lo, counts) + offsets, 2]] = 0.0
        return out


def last_two(history: np.ndarray, start_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's two last words of ``history`` (N, t), <start> standing in before the first: (N,), (N,)."""
    padded = np.concatenate([np.full((len(history), 2), start_id, dtype=history.dtype), history], axis=1)
    return padded[:, -2], padded[:, -1]
