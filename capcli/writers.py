"""Record writers (JSONL, CSV) and reading back a previous run's output for ``--resume``.

Each record is encoded whole and written with one ``write`` then flushed, so
``tail -f`` and pipes see it at once and an interrupted run leaves at most
one partial last line, which ``--resume`` cuts off.

File names that are not UTF-8 round-trip: paths are ``str`` holding
``surrogateescape`` characters (``os.fsdecode``). JSONL writes such a
character as the JSON escape ``\\udcXX`` (the file stays valid UTF-8, and
``json.loads`` + ``os.fsencode`` give back the exact bytes); CSV has no escape
syntax, so its cells hold the name's original bytes (read it with
``errors="surrogateescape"``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from typing import Any, BinaryIO, Protocol

from capcli.errors import FatalError

FORMATS = ("jsonl", "csv")
COLUMNS = ("index", "source", "status", "caption", "score", "error_kind", "error", "n_frames")

# A spreadsheet reads a cell starting with one of these as a formula; "'" is
# included so that the guard is reversible (one leading "'" is always ours).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

Record = dict[str, Any]


class RecordWriter(Protocol):
    def write(self, record: Record) -> None: ...
    def close(self) -> None: ...


def infer_format(path: str, fmt: str | None) -> str:
    """``fmt`` if given, else csv for a ``.csv`` output, else jsonl."""
    if fmt:
        return fmt
    return "csv" if path != "-" and path.lower().endswith(".csv") else "jsonl"


class JsonlWriter:
    def __init__(self, stream: BinaryIO, *, close_stream: bool = True) -> None:
        self._stream, self._close_stream = stream, close_stream

    def write(self, record: Record) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # Lone surrogates (undecodable name bytes) become \udcXX: a JSON escape.
        self._stream.write(line.encode("utf-8", "backslashreplace"))
        self._stream.flush()

    def close(self) -> None:
        _close(self._stream, self._close_stream)


class CsvWriter:
    """RFC 4180 (``csv.writer``, CRLF) with spreadsheet-formula protection."""

    def __init__(
        self, stream: BinaryIO, *, header: bool, columns: tuple[str, ...] = COLUMNS, close_stream: bool = True
    ) -> None:
        self._stream, self._columns, self._close_stream = stream, columns, close_stream
        if header:
            self._put(columns)

    def write(self, record: Record) -> None:
        self._put([_cell(record.get(name)) for name in self._columns])

    def _put(self, row) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        self._stream.write(buf.getvalue().encode("utf-8", "surrogateescape"))
        self._stream.flush()

    def close(self) -> None:
        _close(self._stream, self._close_stream)


def _close(stream: BinaryIO, close_stream: bool) -> None:
    if close_stream:
        stream.close()
    else:
        stream.flush()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):  # tags: a JSON cell
        return json.dumps(value, ensure_ascii=False)
    text = str(value)
    if isinstance(value, str) and text.startswith(_FORMULA_START) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text


def _uncell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def open_output(
    path: str,
    fmt: str,
    *,
    resume: bool = False,
    retry_errors: bool = False,
    extra_columns: tuple[str, ...] = (),
) -> tuple[RecordWriter, set[str]]:
    """A writer for ``path`` (``-``: stdout) and the sources it already holds.

    With ``resume`` an existing file is kept: a truncated last record is cut
    off, new records are appended (no second CSV header), and the returned
    set names the sources to skip. ``retry_errors`` also drops the error
    records, so those inputs run again. ``extra_columns`` are CSV columns
    after the standard ones (JSONL writes whatever a record holds).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    columns = COLUMNS + tuple(extra_columns)
    if path == "-":
        return _writer(sys.stdout.buffer, fmt, columns, header=True, close_stream=False), set()
    done: set[str] = set()
    try:
        if resume and os.path.exists(path):
            done = _prepare_resume(path, fmt, columns, retry_errors)
        stream = open(path, "ab" if resume else "wb")
    except OSError as exc:
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}") from None
    return _writer(stream, fmt, columns, header=stream.tell() == 0), done


def _writer(
    stream: BinaryIO, fmt: str, columns: tuple[str, ...], *, header: bool, close_stream: bool = True
) -> RecordWriter:
    if fmt == "csv":
        return CsvWriter(stream, header=header, columns=columns, close_stream=close_stream)
    return JsonlWriter(stream, close_stream=close_stream)


def read_records(path: str, fmt: str, columns: tuple[str, ...] = COLUMNS) -> list[Record]:
    """The complete records of an output file (a truncated last one is left out).

    CSV cells come back as strings, with the formula guard removed.
    """
    with open(path, "rb") as f:
        return [record for record, _, _ in _scan(f, fmt, path, columns)]


def _prepare_resume(path: str, fmt: str, columns: tuple[str, ...], retry_errors: bool) -> set[str]:
    with open(path, "r+b") as f:
        kept: list[tuple[str, int, int]] = []
        end = 0
        for record, start, end in _scan(f, fmt, path, columns):
            if not (retry_errors and record["status"] == "error"):
                kept.append((str(record["source"]), start, end))
        if retry_errors:
            _rewrite(f, path, fmt, kept)
        else:
            f.truncate(max(end, _header_end(f, fmt)))  # cut a truncated last record
    return {source for source, _, _ in kept}


def _header_end(f: BinaryIO, fmt: str) -> int:
    """Byte offset after a complete CSV header (0 if there is none yet)."""
    if fmt != "csv":
        return 0
    f.seek(0)
    first = f.readline()
    return len(first) if first.endswith(b"\n") else 0


def _rewrite(f: BinaryIO, path: str, fmt: str, spans: list[tuple[str, int, int]]) -> None:
    """Keep only ``spans`` (and the CSV header): temp file beside it, then os.replace."""
    fd, tmp = tempfile.mkstemp(prefix=".capcli-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as out:
            header_end = _header_end(f, fmt)
            f.seek(0)
            out.write(f.read(header_end))
            for _, start, end in spans:
                f.seek(start)
                out.write(f.read(end - start))
        shutil.copymode(path, tmp)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _scan(f: BinaryIO, fmt: str, path: str, columns: tuple[str, ...]) -> Iterator[tuple[Record, int, int]]:
    """(record, start, end) byte spans of the complete records in ``f``."""
    return _scan_csv(f, path, columns) if fmt == "csv" else _scan_jsonl(f, path)


def _scan_jsonl(f: BinaryIO, path: str) -> Iterator[tuple[Record, int, int]]:
    offset = 0
    for number, line in enumerate(f, 1):
        start, offset = offset, offset + len(line)
        if not line.endswith(b"\n"):
            return  # the truncated last line of an interrupted run
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict) or "source" not in record or "status" not in record:
            raise FatalError(f"{path}: line {number} is not a capcli JSONL record; not resuming")
        yield record, start, offset


class _Lines:
    """Decoded lines for csv.reader, keeping count of the bytes handed out."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.offset, self.last, self.exhausted = f, 0, b"", False

    def __iter__(self) -> Iterator[str]:
        for line in self._f:
            self.offset += len(line)
            self.last = line
            yield line.decode("utf-8", "surrogateescape")
        self.exhausted = True


def _scan_csv(f: BinaryIO, path: str, columns: tuple[str, ...]) -> Iterator[tuple[Record, int, int]]:
    lines = _Lines(f)
    rows = csv.reader(lines, strict=True)
    start = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except csv.Error:
            if lines.exhausted:  # the data ends inside a quoted cell: a truncated tail
                return
            raise FatalError(f"{path}: malformed CSV near byte {lines.offset}; not resuming") from None
        if not lines.last.endswith(b"\n"):
            return  # only the last line can lack its newline: a truncated tail
        if start == 0:
            if tuple(row) != columns:
                raise FatalError(f"{path}: not a capcli CSV (header {row!r}); not resuming")
        elif len(row) != len(columns):
            raise FatalError(f"{path}: malformed CSV record near byte {start}; not resuming")
        else:
            yield dict(zip(columns, map(_uncell, row))), start, lines.offset
        start = lines.offset
