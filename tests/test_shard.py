"""``--shard K/N`` (issue 8): a stable, coordination-free split whose union is the whole input; ``--device``."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from test_cli_caption import make_pngs

from capcli.cli import main
from capcli.shard import parse_shard, shard_of, take_shard
from capcli.sources import Item


def caption(*args: str):
    return CliRunner().invoke(main, ["caption", *args])


def test_parse_shard_counts_from_zero() -> None:
    assert parse_shard("0/1") == (0, 1)
    assert parse_shard(" 2/3 ") == (2, 3)
    for bad in ["3/3", "1/0", "-1/2", "a/b", "1", "1/2/3", "", "0/ 2"]:
        with pytest.raises(ValueError):
            parse_shard(bad)


@pytest.mark.parametrize("value", ["3/3", "0/0", "x/2", "1:2"])
def test_a_bad_shard_is_a_usage_error(value: str, tmp_path: Path) -> None:
    result = caption(str(tmp_path), "--shard", value)
    assert result.exit_code == 2
    assert "--shard" in result.output


def test_the_hash_is_pinned() -> None:
    """Jobs on different machines and capcli versions must agree, so the rule may never change:
    blake2b (8-byte digest) of the source's bytes, big-endian, modulo N."""
    assert shard_of("photos/dog.jpg", 1000) == 200
    assert shard_of("https://example.com/a.jpg", 1000) == 102
    assert shard_of(os.fsdecode(b"caf\xe9.jpg"), 1000) == 431  # a non-UTF-8 name hashes its own bytes


@given(st.lists(st.text(max_size=20), max_size=30), st.integers(min_value=1, max_value=7))
def test_every_item_falls_in_exactly_one_shard(sources: list[str], n: int) -> None:
    items = [Item(i, s) for i, s in enumerate(sources)]
    taken = sorted(item.index for k in range(n) for item in take_shard(items, k, n))
    assert taken == list(range(len(sources)))


def test_three_shards_caption_every_input_exactly_once(fake, tmp_path: Path) -> None:  # noqa: F811
    make_pngs(tmp_path / "photos", 30)
    missing = str(tmp_path / "missing.png")
    whole = caption(str(tmp_path / "photos"), missing)
    assert whole.exit_code == 3, whole.output
    expected = [json.loads(line) for line in whole.stdout.splitlines()]
    assert len(expected) == 31

    parts = []
    for k in range(3):
        out = tmp_path / f"shard-{k}.jsonl"
        result = caption(str(tmp_path / "photos"), missing, "--shard", f"{k}/3", "-o", str(out))
        assert result.exit_code in (0, 3), result.output
        assert f"(shard {k}/3)" in result.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        indexes = [r["index"] for r in records]
        assert indexes == sorted(indexes) and records, "each shard keeps input order and gets some work"
        parts.append(records)
    merged = sorted((r for part in parts for r in part), key=lambda r: r["index"])
    assert merged == expected  # one record per input, global indexes, same content as one run


@pytest.mark.parametrize(
    ("device", "code"), [("cuda:1", 0), ("CUDA:12", 0), ("cpu", 0), ("cuda:x", 2), ("gpu", 2), ("cpu:1", 2)]
)
def test_device_takes_cuda_n(fake, tmp_path: Path, device: str, code: int) -> None:  # noqa: F811
    make_pngs(tmp_path, 1)
    result = caption(str(tmp_path), "--device", device)
    assert result.exit_code == code, result.output
