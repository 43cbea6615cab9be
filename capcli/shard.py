"""``--shard K/N``: a deterministic share of the inputs, so N jobs split a run without talking.

An input belongs to shard ``K`` of ``N`` (``K`` counted from 0, as Slurm's
``--array=0-...``, Kubernetes' indexed jobs and ``seq 0 N-1`` count) when the
first 8 bytes of ``blake2b(source)``, read as a big-endian integer, are ``K``
modulo ``N``. The source is the record's ``source`` string (the path as given
or walked, or the URL) encoded as UTF-8, with undecodable file-name bytes
restored (``surrogateescape``), so every machine and every run agrees, and
records keep their global ``index``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator

from capcli.sources import Item

_SPEC = re.compile(r"(\d+)/(\d+)")


def parse_shard(text: str) -> tuple[int, int]:
    """ "K/N" -> (K, N) with 0 <= K < N; ValueError says what is wrong."""
    match = _SPEC.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected K/N such as 0/4, not {text!r}")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1:
        raise ValueError("N must be at least 1")
    if k >= n:
        raise ValueError(f"K counts from 0: shard {k} of {n} does not exist (use 0..{n - 1})")
    return k, n


def shard_of(source: str, count: int) -> int:
    """The shard (0..count-1) that ``source`` belongs to."""
    digest = hashlib.blake2b(source.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def take_shard(items: Iterable[Item], shard: int, count: int) -> Iterator[Item]:
    """The items of shard ``shard`` of ``count``, lazily, with their global indexes."""
    return (item for item in items if shard_of(item.source, count) == shard)
