"""``capcli caption`` and ``url-list``'s decoding controls with the tiny exported bundle (issue 21, item 2):
--min-len, --no-repeat-ngram, --num-captions, --sample (--temperature, --top-p, --seed) and --prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import capcli
from capcli.cli import main
from capcli.shard import shard_of
from capcli.writers import COLUMNS, read_records

pytest.importorskip("torch", reason="building the tiny bundle needs the train extra")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The 5 example photos, twice over: 10 inputs, so every batch size below splits them differently."""
    from example_photos import copy_photos

    folder = tmp_path_factory.mktemp("decoding") / "photos"
    copy_photos(folder)
    return [str(p) for p in sorted(folder.iterdir())] * 2


def caption(bundle: Path, *args: str) -> tuple[int, list[dict], str]:
    """Run ``capcli caption`` on the tiny bundle: (exit code, JSONL records, stderr)."""
    result = CliRunner().invoke(main, ["caption", "--model", str(bundle), "--device", "cpu", "--workers", "1", *args])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    return result.exit_code, records, result.stderr


def words(record: dict) -> list[str]:
    return record["caption"].rstrip(".").lower().split()


def test_min_len_holds_back_the_end(tiny_bundle: Path, inputs: list[str]) -> None:
    # The tiny random model rarely ends on its own; hot sampling draws <end> early now and then.
    hot = ("--sample", "--temperature", "3", "--max-len", "20")
    code, free, _ = caption(tiny_bundle, *inputs, *hot)
    assert code == 0 and min(len(words(r)) for r in free) < 12
    code, records, _ = caption(tiny_bundle, *inputs, *hot, "--min-len", "12")
    assert code == 0 and all(len(words(r)) >= 12 for r in records)


def test_no_repeat_ngram_zero_allows_repeats(tiny_bundle: Path, inputs: list[str]) -> None:
    fixed = ("--beam", "1", "--min-len", "8", "--max-len", "8", "--allow-dangling-end")
    _, unblocked, _ = caption(tiny_bundle, *inputs[:5], *fixed, "--no-repeat-ngram", "0")
    _, no_word_twice, _ = caption(tiny_bundle, *inputs[:5], *fixed, "--no-repeat-ngram", "1")
    assert any(len(set(words(r))) < len(words(r)) for r in unblocked)
    assert all(len(set(words(r))) == len(words(r)) for r in no_word_twice)


def test_num_captions_are_distinct_best_first_and_led_by_the_caption(
    tiny_bundle: Path, inputs: list[str], tmp_path: Path
) -> None:
    code, plain, _ = caption(tiny_bundle, *inputs[:5], "--beam", "4")
    code, records, _ = caption(tiny_bundle, *inputs[:5], "--beam", "4", "--num-captions", "3")
    assert code == 0 and "captions" not in plain[0]
    for one, record in zip(plain, records):
        best = record["captions"]
        assert len(best) == 3 and len({c["caption"] for c in best}) == 3
        assert [c["score"] for c in best] == sorted((c["score"] for c in best), reverse=True)
        assert (best[0]["caption"], best[0]["score"]) == (record["caption"], record["score"])
        assert (record["caption"], record["score"]) == (one["caption"], one["score"])  # the same search
    out = tmp_path / "out.csv"
    code, _, _ = caption(tiny_bundle, *inputs[:5], "--beam", "4", "--num-captions", "3", "-o", str(out))
    rows = read_records(str(out), "csv", (*COLUMNS, "captions"))
    assert code == 0 and [json.loads(row["captions"]) for row in rows] == [r["captions"] for r in records]


def test_seeded_sampling_is_the_same_whatever_the_batch_size_or_shard(
    tiny_bundle: Path, inputs: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Shards hash the source string: relative paths hash the same in every run (absolute temporary
    # folders did not, and once put all ten inputs in one shard).
    monkeypatch.chdir(Path(inputs[0]).parent.parent)
    inputs = [str(Path(p).relative_to(Path.cwd())) for p in inputs]
    assert {shard_of(p, 2) for p in inputs} == {0, 1}
    sample = ("--sample", "--seed", "5", "--temperature", "1.3", "--top-p", "0.95")
    runs = [caption(tiny_bundle, *inputs, *sample, "--batch-size", size)[1] for size in ("1", "3", "8")]
    shards = [caption(tiny_bundle, *inputs, *sample, "--batch-size", "3", "--shard", f"{k}/2")[1] for k in (0, 1)]
    merged = sorted(shards[0] + shards[1], key=lambda r: r["index"])
    assert shards[0] and shards[1]
    assert runs[0] == runs[1] == runs[2] == merged
    # Each input draws from its own stream: a photo given twice gets two draws; another seed, other captions.
    assert [r["caption"] for r in runs[0][:5]] != [r["caption"] for r in runs[0][5:]]
    other = caption(tiny_bundle, *inputs, "--sample", "--seed", "6", "--temperature", "1.3", "--top-p", "0.95")[1]
    assert [r["caption"] for r in other] != [r["caption"] for r in runs[0]]


def test_prefix_starts_every_caption(tiny_bundle: Path, inputs: list[str]) -> None:
    for mode in (("--beam", "3"), ("--beam", "1"), ("--sample",)):
        code, records, _ = caption(tiny_bundle, *inputs[:5], "--prefix", "A little girl", *mode)
        assert code == 0 and all(r["caption"].startswith("A little girl ") for r in records)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--prefix", "a zebra on the xylophone"), "'zebra', 'xylophone'"),
        (("--num-captions", "4"), "--num-captions 4 is more than the beam"),
        (("--temperature", "0.5"), "--temperature: only with --sample"),
        (("--sample", "--num-captions", "2"), "does not go with --sample"),
        (("--min-len", "9", "--max-len", "8"), "--min-len"),
        (("--top-p", "0"), "--top-p"),
    ],
)
def test_bad_decoding_options_exit_2_naming_the_problem(
    tiny_bundle: Path, inputs: list[str], args: tuple[str, ...], message: str
) -> None:
    code, records, stderr = caption(tiny_bundle, inputs[0], *args)
    assert code == 2 and records == [] and message in stderr


def test_url_list_takes_the_same_options(tiny_bundle: Path) -> None:
    result = CliRunner().invoke(main, ["url-list", "-", "--model", str(tiny_bundle), "--prefix", "a zebra"], input="")
    assert result.exit_code == 2 and "'zebra'" in result.stderr


def test_load_takes_the_decoding_options(tiny_bundle: Path, inputs: list[str]) -> None:
    model = capcli.load(tiny_bundle, device="cpu", beam=3, num_captions=2, prefix="a little", min_len=4)
    record = model.caption_one(inputs[0])
    assert record["caption"].startswith("A little ") and len(words(record)) >= 4 and len(record["captions"]) == 2
    assert not model.captioner.spec.graph_compatible
    assert capcli.load(tiny_bundle, device="cpu", beam=5, length_penalty=1.0, min_len=4).captioner.spec.graph_compatible
    with pytest.raises(capcli.UsageError, match="'zebra'"):
        capcli.load(tiny_bundle, device="cpu", prefix="zebra")
