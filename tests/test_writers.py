"""JSONL/CSV writers: quoting, formula guard, odd names round-trip, resume and retry."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from capcli.errors import FatalError
from capcli.writers import COLUMNS, infer_format, open_output, read_records


def ok(index: int, source: str, caption: str = "A dog runs.", score: float = -1.25) -> dict:
    return {"index": index, "source": source, "status": "ok", "caption": caption, "score": score}


def err(index: int, source: str, kind: str = "truncated") -> dict:
    return {"index": index, "source": source, "status": "error", "caption": None, "score": None,
            "error_kind": kind, "error": "image file is truncated"}


def write(path: Path, fmt: str, records, **kwargs) -> set[str]:
    writer, done = open_output(str(path), fmt, **kwargs)
    for record in records:
        writer.write(record)
    writer.close()
    return done


ODD_NAMES = ["a,b.jpg", 'say "cheese".jpg', "two\nlines.jpg", "crlf\r\n.jpg", "caf\u00e9.jpg",
             os.fsdecode(b"latin1-\xe9\xff.jpg"), "=HYPERLINK(1).jpg", "'quoted.jpg", "-5"]


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
    write(out, "csv", [
        ok(0, "a,b.jpg", caption='He said "hi".'),
        ok(1, "@SUM(A1).jpg", caption="+1 more", score=-0.5),
        err(2, "\tx.jpg"),
        ok(3, "-7.5", caption="-3"),
    ])
    raw = out.read_bytes()
    assert raw.startswith(b"index,source,status,caption,score,error_kind,error,n_frames\r\n")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS)
    assert rows[1][:5] == ["0", "a,b.jpg", "ok", 'He said "hi".', "-1.25"]
    assert rows[2][1:5] == ["'@SUM(A1).jpg", "ok", "'+1 more", "-0.5"]  # numbers stay numbers
    assert rows[3][1] == "'\tx.jpg" and rows[3][5:7] == ["truncated", "image file is truncated"]
    assert rows[4][1] == "-7.5" and rows[4][3] == "-3"  # numeric text is no formula
    assert [r["source"] for r in read_records(str(out), "csv")] == [
        "a,b.jpg", "@SUM(A1).jpg", "\tx.jpg", "-7.5"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_resume_cuts_a_truncated_last_record_and_appends(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"o.{fmt}"
    write(out, fmt, [ok(0, "a.jpg"), err(1, "b\nb.jpg"), ok(2, "c.jpg")])
    full = out.read_bytes()
    write(out, fmt, [ok(0, "a.jpg"), err(1, "b\nb.jpg")])
    partial = full[len(out.read_bytes()):]
    for cut in (1, len(partial) // 2, len(partial) - 1):  # anywhere inside the last record
        out.write_bytes(full[: len(full) - len(partial) + cut])
        done = write(out, fmt, [ok(2, "c.jpg", caption="Again.")], resume=True)
        assert done == {"a.jpg", "b\nb.jpg"}
        records = read_records(str(out), fmt)
        assert [r["source"] for r in records] == ["a.jpg", "b\nb.jpg", "c.jpg"]
        assert records[-1]["caption"] == "Again."
        assert out.read_bytes().count(b"index,source") == (fmt == "csv")
        assert out.read_bytes().endswith(b"\n")


def test_resume_csv_with_a_cut_header_writes_one_header(tmp_path: Path) -> None:
    out = tmp_path / "o.csv"
    out.write_bytes(b"index,source,sta")
    assert write(out, "csv", [ok(0, "a.jpg")], resume=True) == set()
    assert out.read_bytes().count(b"index,source") == 1
    assert [r["source"] for r in read_records(str(out), "csv")] == ["a.jpg"]


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_retry_errors_drops_error_records_and_reruns_them(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / f"o.{fmt}"
    write(out, fmt, [ok(0, "a.jpg"), err(1, "b.jpg"), ok(2, "c.jpg"), err(3, "d.jpg")])
    os.chmod(out, 0o640)
    done = write(out, fmt, [ok(1, "b.jpg")], resume=True, retry_errors=True)
    assert done == {"a.jpg", "c.jpg"}
    records = read_records(str(out), fmt)
    assert [(r["source"], r["status"]) for r in records] == [
        ("a.jpg", "ok"), ("c.jpg", "ok"), ("b.jpg", "ok")]
    assert os.stat(out).st_mode & 0o777 == 0o640
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".capcli-")]


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
    assert write(tmp_path / "new.csv", "csv", [ok(0, "a.jpg")], resume=True) == set()
    with pytest.raises(FatalError, match="cannot write"):
        open_output(str(tmp_path / "no" / "dir.jsonl"), "jsonl")


def test_stdout_and_format_inference(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    writer, done = open_output("-", "jsonl")
    writer.write(ok(0, "a.jpg"))
    writer.close()
    assert json.loads(capsysbinary.readouterr().out) == ok(0, "a.jpg") and done == set()
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
    with pytest.raises(FatalError, match="not a capcli CSV"):
        open_output(str(out), "csv", resume=True)  # without the extra column
