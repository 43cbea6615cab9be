"""JSONL/CSV writers: quoting, formula guard, odd names round-trip, resume and retry."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from pathlib import Path

import pytest

from capcli import writers
from capcli.errors import FatalError
from capcli.writers import COLUMNS, CsvWriter, JsonlWriter, infer_format, open_output, read_records


def ok(index: int, source: str, caption: str = "A dog runs.", score: float = -1.25) -> dict:
    return {"index": index, "source": source, "status": "ok", "caption": caption, "score": score}


def err(index: int, source: str, kind: str = "truncated") -> dict:
    return {
        "index": index,
        "source": source,
        "status": "error",
        "caption": None,
        "score": None,
        "error_kind": kind,
        "error": "image file is truncated",
    }


def write(path: Path, fmt: str, records, **kwargs) -> dict[int, str]:
    writer, done = open_output(str(path), fmt, **kwargs)
    for record in records:
        writer.write(record)
    writer.close()
    return done


ODD_NAMES = [
    "a,b.jpg",
    'say "cheese".jpg',
    "two\nlines.jpg",
    "crlf\r\n.jpg",
    "caf\u00e9.jpg",
    os.fsdecode(b"latin1-\xe9\xff.jpg"),
    "=HYPERLINK(1).jpg",
    "'quoted.jpg",
    "-5",
]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_odd_file_names_round_trip_and_open(tmp_path: Path, fmt: str) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    sources = []
    for name in ODD_NAMES:
        path = os.path.join(str(photos), name)
        with open(path, "wb") as f:  # str with surrogateescape -> the original bytes
            f.write(b"image")
        sources.append(path)
    out = tmp_path / f"out.{fmt}"
    write(out, fmt, [ok(i, s, caption=f"=cmd|{i}") for i, s in enumerate(sources)])

    records = read_records(str(out), fmt)
    assert [r["source"] for r in records] == sources
    assert [r["caption"] for r in records] == [f"=cmd|{i}" for i in range(len(sources))]
    for record in records:
        with open(record["source"], "rb") as f:
            assert f.read() == b"image"


def test_jsonl_stays_valid_utf8_with_undecodable_names(tmp_path: Path) -> None:
    source = os.fsdecode(b"caf\xe9.jpg")
    write(tmp_path / "o.jsonl", "jsonl", [ok(0, source)])
    raw = (tmp_path / "o.jsonl").read_bytes()
    text = raw.decode("utf-8")  # strict: no raw \xe9 byte in the file
    assert "\\udce9" in text and text.endswith("\n") and text.count("\n") == 1
    assert os.fsencode(json.loads(text)["source"]) == b"caf\xe9.jpg"


def test_csv_quoting_and_formula_guard(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    write(
        out,
        "csv",
        [
            ok(0, "a,b.jpg", caption='He said "hi".'),
            ok(1, "@SUM(A1).jpg", caption="+1 more", score=-0.5),
            err(2, "\tx.jpg"),
            ok(3, "-7.5", caption="-3"),
        ],
    )
    raw = out.read_bytes()
    assert raw.startswith(b"index,source,status,caption,score,error_kind,error,n_frames\r\n")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS)
    assert rows[1][:5] == ["0", "a,b.jpg", "ok", 'He said "hi".', "-1.25"]
    assert rows[2][1:5] == ["'@SUM(A1).jpg", "ok", "'+1 more", "-0.5"]  # numbers stay numbers
    assert rows[3][1] == "'\tx.jpg" and rows[3][5:7] == ["truncated", "image file is truncated"]
    assert rows[4][1] == "-7.5" and rows[4][3] == "-3"  # numeric text is no formula
    assert [r["source"] for r in read_records(str(out), "csv")] == ["a,b.jpg", "@SUM(A1).jpg", "\tx.jpg", "-7.5"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_cuts_a_truncated_last_record_and_appends(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"o.{fmt}"
    write(out, fmt, [ok(0, "a.jpg"), err(1, "b\nb.jpg"), ok(2, "c.jpg")])
    full = out.read_bytes()
    write(out, fmt, [ok(0, "a.jpg"), err(1, "b\nb.jpg")])
    partial = full[len(out.read_bytes()) :]
    for cut in (1, len(partial) // 2, len(partial) - 1):  # anywhere inside the last record
        out.write_bytes(full[: len(full) - len(partial) + cut])
        done = write(out, fmt, [ok(2, "c.jpg", caption="Again.")], resume=True)
        assert done == {0: "a.jpg", 1: "b\nb.jpg"}
        records = read_records(str(out), fmt)
        assert [r["source"] for r in records] == ["a.jpg", "b\nb.jpg", "c.jpg"]
        assert records[-1]["caption"] == "Again."
        assert out.read_bytes().count(b"index,source") == (fmt == "csv")
        assert out.read_bytes().endswith(b"\n")


def test_resume_csv_with_a_cut_header_writes_one_header(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    out.write_bytes(b"index,source,sta")
    assert write(out, "csv", [ok(0, "a.jpg")], resume=True) == {}
    assert out.read_bytes().count(b"index,source") == 1
    assert [r["source"] for r in read_records(str(out), "csv")] == ["a.jpg"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_retry_errors_reruns_the_failures_and_keeps_index_order(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"o.{fmt}"
    write(out, fmt, [ok(0, "a.jpg"), err(1, "b.jpg"), ok(2, "c.jpg"), err(3, "d.jpg"), err(4, "e.jpg")])
    os.chmod(out, 0o640)
    # b and e fixed; d still fails; f is new (an interrupted first run had not reached it).
    done = write(
        out,
        fmt,
        [ok(1, "b.jpg"), err(3, "d.jpg", "decode_error"), ok(4, "e.jpg"), ok(5, "f.jpg")],
        resume=True,
        retry_errors=True,
    )
    assert done == {0: "a.jpg", 2: "c.jpg"}
    records = read_records(str(out), fmt)
    assert [(r["source"], r["status"]) for r in records] == [
        ("a.jpg", "ok"),
        ("b.jpg", "ok"),
        ("c.jpg", "ok"),
        ("d.jpg", "error"),
        ("e.jpg", "ok"),
        ("f.jpg", "ok"),
    ]
    assert records[3]["error_kind"] == "decode_error"  # the new record replaced the old one
    assert out.read_bytes().count(b"index,source") == (fmt == "csv")
    assert os.stat(out).st_mode & 0o777 == 0o640
    assert sorted(os.listdir(tmp_path)) == [out.name]  # no temporary file left


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_an_interrupted_retry_keeps_every_record_and_a_failed_one_keeps_the_file(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / f"o.{fmt}"
    write(out, fmt, [err(0, "a.jpg"), ok(1, "b.jpg"), err(2, "c.jpg"), err(3, "d.jpg")])
    before = out.read_bytes()
    # Interrupted after retrying a: b, c and d are kept as they were, in order.
    write(out, fmt, [ok(0, "a.jpg")], resume=True, retry_errors=True)
    assert [(r["source"], r["status"]) for r in read_records(str(out), fmt)] == [
        ("a.jpg", "ok"),
        ("b.jpg", "ok"),
        ("c.jpg", "error"),
        ("d.jpg", "error"),
    ]
    # A write that fails (a full disk) leaves the file as it was before that run.
    out.write_bytes(before)
    writer, _ = open_output(str(out), fmt, resume=True, retry_errors=True)
    writer.write(ok(0, "a.jpg"))
    real = writers.write_whole

    def disk_full(stream, data: bytes) -> None:
        real(stream, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writers, "write_whole", disk_full)
    with pytest.raises(OSError):
        writer.write(ok(2, "c.jpg"))
    writer.close()
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == [out.name]


class FillingFile(io.FileIO):
    """A file on a disk with ``room`` bytes free: a write takes what fits, the next one fails with ENOSPC."""

    def __init__(self, path: Path, room: int) -> None:
        super().__init__(path, "ab")
        self.room = room

    def write(self, data) -> int:
        free = self.room - self.seek(0, os.SEEK_END)
        if free <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(bytes(data)[:free])


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_full_disk_leaves_no_torn_record(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"o.{fmt}"
    stream = FillingFile(out, room=300)
    writer = JsonlWriter(stream) if fmt == "jsonl" else CsvWriter(stream, header=True)
    written = 0
    with pytest.raises(OSError) as info:
        for i in range(100):
            writer.write(ok(i, f"photo-{i}.jpg", caption="A dog runs through the grass."))
            written += 1
    assert info.value.errno == errno.ENOSPC and 0 < written < 100
    writer.close()
    data = out.read_bytes()
    assert data.endswith(b"\n") and len(data) < 300  # cut back to the end of the last whole record
    assert [r["index"] for r in read_records(str(out), fmt)] in ([*range(written)], [str(i) for i in range(written)])


def test_resume_refuses_files_that_are_not_ours(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text('{"index": 0, "source": "a", "status": "ok"}\nnot json\n{"index": 2}\n')
    with pytest.raises(FatalError, match="line 2"):
        open_output(str(out), "jsonl", resume=True)
    assert out.read_text().count("\n") == 3  # left untouched
    other = tmp_path / "o.csv"
    other.write_text("name,caption\r\nx,y\r\n")
    with pytest.raises(FatalError, match="not a capcli CSV"):
        open_output(str(other), "csv", resume=True)


def test_resume_of_a_missing_file_starts_fresh_and_unwritable_is_fatal(tmp_path: Path) -> None:
    assert write(tmp_path / "new.csv", "csv", [ok(0, "a.jpg")], resume=True) == {}
    with pytest.raises(FatalError, match="cannot write"):
        open_output(str(tmp_path / "no" / "dir.jsonl"), "jsonl")


def test_stdout_and_format_inference(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    writer, done = open_output("-", "jsonl")
    writer.write(ok(0, "a.jpg"))
    writer.close()
    assert json.loads(capsysbinary.readouterr().out) == ok(0, "a.jpg") and done == {}
    assert infer_format("x.CSV", None) == "csv"
    assert infer_format("x.csv", "jsonl") == "jsonl"
    assert infer_format("-", None) == infer_format("x.txt", None) == "jsonl"


def test_extra_columns_for_csv(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    writer, _ = open_output(str(out), "csv", extra_columns=("id",))
    writer.write(ok(0, "http://h/a.jpg") | {"id": "=x1"})
    writer.close()
    header, row = out.read_bytes().splitlines()
    assert header.endswith(b",n_frames,id") and row.endswith(b",'=x1")
    [record] = read_records(str(out), "csv", COLUMNS + ("id",))
    assert record["id"] == "=x1" and record["source"] == "http://h/a.jpg"
    with pytest.raises(FatalError, match="the file has the column.s. id this run does not write"):
        open_output(str(out), "csv", resume=True)  # without the extra column


def test_resuming_a_csv_without_a_column_this_run_adds_says_so(tmp_path: Path) -> None:
    """E.g. --attention-dir on a file first written without it: not "not a capcli CSV"."""
    out = tmp_path / "o.csv"
    write(out, "csv", [ok(0, "a.jpg")])
    with pytest.raises(FatalError) as info:
        open_output(str(out), "csv", resume=True, extra_columns=("attention",))
    message = str(info.value)
    assert "this run adds the column(s) attention" in message and "--attention-dir" in message
    assert "not a capcli CSV" not in message


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_matches_records_by_index_so_repeated_inputs_count(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"o.{fmt}"
    write(out, fmt, [ok(0, "a.jpg"), ok(1, "b.jpg"), ok(2, "a.jpg")])
    assert write(out, fmt, [ok(3, "b.jpg")], resume=True) == {0: "a.jpg", 1: "b.jpg", 2: "a.jpg"}
    assert [r["source"] for r in read_records(str(out), fmt)] == ["a.jpg", "b.jpg", "a.jpg", "b.jpg"]
