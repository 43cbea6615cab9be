"""Record writers (JSONL, CSV, a JSON array) and reading back a previous run's output for ``--resume``.

Each record is encoded whole and written straight to the file (no buffer), so
``tail -f`` and pipes see it at once. A record is written whole or not at
all: when a write fails partway (a full disk, a file-size limit), the file
is cut back to where the record began. A process killed mid-write leaves at
most one partial last line, which ``--resume`` cuts off.

``--resume`` matches records to inputs by their ``index`` (an input given
twice is two inputs) and appends; ``--retry-errors`` writes the merged file,
in index order, beside the output and moves it into place when the run ends
(the original stays untouched until then).

File names that are not UTF-8 round-trip: paths are ``str`` holding
``surrogateescape`` characters (``os.fsdecode``). JSONL writes such a
character as the JSON escape ``\\udcXX`` (the file stays valid UTF-8, and
``json.loads`` + ``os.fsencode`` give back the exact bytes); CSV has no escape
syntax, so its cells hold the name's original bytes (read it with
``errors="surrogateescape"``).
"""

from __future__ import annotations

import contextlib
import csv
import errno
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

FORMATS = ("jsonl", "csv", "json")
RESUMABLE_FORMATS = ("jsonl", "csv")  # a JSON array is closed at the end: nothing can be appended
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


def encode_jsonl(record: Record) -> bytes:
    line = json.dumps(record, ensure_ascii=False) + "\n"
    # Lone surrogates (undecodable name bytes) become \udcXX: a JSON escape.
    return line.encode("utf-8", "backslashreplace")


def _encode_csv(row) -> bytes:
    buf = io.StringIO()
    csv.writer(buf).writerow(row)
    return buf.getvalue().encode("utf-8", "surrogateescape")


def write_whole(stream: Any, data: bytes) -> None:
    """Write ``data`` whole or not at all: after a failed write the stream is cut back to where it began.

    ``stream`` is unbuffered (``write`` may take only part of the data) or buffered (then flushed).
    Where it cannot be cut back (a pipe), a failed write raises all the same.
    """
    try:
        start = stream.tell() if stream.seekable() else None
    except OSError:
        start = None
    try:
        view = memoryview(data)
        while view:
            n = stream.write(view)
            if n is None:  # a non-blocking stream that took nothing: treat as an error
                raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            view = view[n:]
        stream.flush()
    except BaseException:  # an OSError, or Ctrl-C between two partial writes
        if start is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.truncate(start)
                stream.seek(start)
        raise


class JsonlWriter:
    def __init__(self, stream: BinaryIO, *, close_stream: bool = True) -> None:
        self._stream, self._close_stream = stream, close_stream

    def write(self, record: Record) -> None:
        write_whole(self._stream, encode_jsonl(record))

    def close(self) -> None:
        _close(self._stream, self._close_stream)


class JsonArrayWriter:
    """One JSON array, a record a line: ``[`` at once, ``]`` on ``close()``.

    The caption run closes its writer however it ends (errors, Ctrl-C), so the output is valid JSON then too.
    """

    def __init__(self, stream: BinaryIO, *, close_stream: bool = True) -> None:
        self._stream, self._close_stream = stream, close_stream
        self._separator = b"\n"
        write_whole(stream, b"[")

    def write(self, record: Record) -> None:
        write_whole(self._stream, self._separator + encode_jsonl(record).rstrip(b"\n"))
        self._separator = b",\n"

    def close(self) -> None:
        try:
            write_whole(self._stream, b"\n]\n")
        finally:
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
        write_whole(self._stream, _encode_csv(row))

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


Done = dict[int, str]  # index -> source of the records an output already holds


def open_output(
    path: str,
    fmt: str,
    *,
    resume: bool = False,
    retry_errors: bool = False,
    extra_columns: tuple[str, ...] = (),
) -> tuple[RecordWriter, Done]:
    """A writer for ``path`` (``-``: stdout) and the records it already holds, by index.

    With ``resume`` an existing file is kept: a truncated last record is cut
    off, new records are appended (no second CSV header), and the returned
    mapping (index -> source) names the inputs to skip. ``retry_errors``
    leaves the error records out of that mapping, so those inputs run again,
    and returns a writer that merges old and new records in index order into
    a file beside ``path``, moved into place by ``close()``.
    ``extra_columns`` are CSV columns after the standard ones (JSONL writes
    whatever a record holds).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    columns = COLUMNS + tuple(extra_columns)
    if path == "-":
        return _writer(_stdout(), fmt, columns, header=True, close_stream=False), {}
    try:
        if resume and retry_errors and os.path.exists(path):
            return _merging_writer(path, fmt, columns)
        done: Done = {}
        if resume and os.path.exists(path):
            done = _prepare_resume(path, fmt, columns)
        stream = open(path, "ab" if resume else "wb", buffering=0)
    except OSError as exc:
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        return _writer(stream, fmt, columns, header=stream.tell() == 0), done
    except OSError as exc:  # the CSV header did not fit
        stream.close()
        raise FatalError(f"cannot write {path}: {exc.strerror or exc}") from None


def _stdout() -> Any:
    """Standard output, unbuffered where it is a real file descriptor (so a record is written in one piece)."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):  # replaced (tests, embedding)
        return sys.stdout.buffer
    sys.stdout.flush()
    return open(fd, "wb", buffering=0, closefd=False)


def _writer(
    stream: BinaryIO, fmt: str, columns: tuple[str, ...], *, header: bool, close_stream: bool = True
) -> RecordWriter:
    if fmt == "csv":
        return CsvWriter(stream, header=header, columns=columns, close_stream=close_stream)
    if fmt == "json":
        return JsonArrayWriter(stream, close_stream=close_stream)
    return JsonlWriter(stream, close_stream=close_stream)


def read_records(path: str, fmt: str, columns: tuple[str, ...] = COLUMNS) -> list[Record]:
    """The complete records of an output file (a truncated last one is left out).

    CSV cells come back as strings, with the formula guard removed.
    """
    with open(path, "rb") as f:
        return [record for record, _, _ in _scan(f, fmt, path, columns)]


_Span = tuple[int, int, int]  # index, start byte, end byte of one record


def _spans(f: BinaryIO, fmt: str, path: str, columns: tuple[str, ...]) -> tuple[list[_Span], Done, Done, int]:
    """Every complete record's span; index -> source of all of them and of the captioned ones; end of the last."""
    spans: list[_Span] = []
    every: Done = {}
    ok: Done = {}
    end = 0
    for number, (record, start, end) in enumerate(_scan(f, fmt, path, columns), 1):
        try:
            index = int(record["index"])
        except (KeyError, TypeError, ValueError):
            raise FatalError(f"{path}: record {number} has no index; not resuming") from None
        spans.append((index, start, end))
        every[index] = ok[index] = str(record["source"])
        if record["status"] == "error":
            del ok[index]
    return spans, every, ok, end


def _prepare_resume(path: str, fmt: str, columns: tuple[str, ...]) -> Done:
    with open(path, "r+b") as f:
        _, every, _, end = _spans(f, fmt, path, columns)
        f.truncate(max(end, _header_end(f, fmt)))  # cut a truncated last record
    return every


def _header_end(f: BinaryIO, fmt: str) -> int:
    """Byte offset after a complete CSV header (0 if there is none yet)."""
    if fmt != "csv":
        return 0
    f.seek(0)
    first = f.readline()
    return len(first) if first.endswith(b"\n") else 0


def _merging_writer(path: str, fmt: str, columns: tuple[str, ...]) -> tuple[RecordWriter, Done]:
    old = open(path, "rb")
    try:
        spans, _, ok, _ = _spans(old, fmt, path, columns)
        return _MergingWriter(path, fmt, columns, old, spans), ok
    except BaseException:
        old.close()
        raise


class _MergingWriter:
    """``--retry-errors``: the old file's records and the new ones, in index order, into a file beside it.

    A new record replaces the old one with its index. ``close()`` copies the
    old records not replaced (all of them after an interruption) and moves
    the new file into place; after a failed write it leaves the old file as
    it was.
    """

    def __init__(self, path: str, fmt: str, columns: tuple[str, ...], old: BinaryIO, spans: list[_Span]) -> None:
        self._path, self._old = path, old
        self._spans = sorted(spans, key=lambda span: span[0])  # stable: the file's order within an index
        self._next = 0  # the first old record not yet copied or replaced
        fd, self._tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=".capcli-tmp", dir=os.path.dirname(os.path.abspath(path))
        )
        self._failed = False
        self._out: Any = None
        try:
            self._out = open(fd, "wb", buffering=0)
            header_end = _header_end(old, fmt)
            old.seek(0)
            if header_end:
                write_whole(self._out, old.read(header_end))
            self._inner = _writer(self._out, fmt, columns, header=fmt == "csv" and not header_end)
        except BaseException:
            self._discard()
            raise

    def write(self, record: Record) -> None:
        try:
            index = int(record["index"])
            self._copy_old(before=index)
            while self._next < len(self._spans) and self._spans[self._next][0] == index:
                self._next += 1  # replaced
            self._inner.write(record)
        except BaseException:
            self._failed = True
            raise

    def close(self) -> None:
        if self._failed:
            self._discard()
            return
        try:
            self._copy_old(before=None)
            os.fsync(self._out.fileno())
            self._out.close()
            shutil.copymode(self._path, self._tmp)
            os.replace(self._tmp, self._path)
        except BaseException:
            self._discard()
            raise
        finally:
            self._old.close()

    def _copy_old(self, before: int | None) -> None:
        while self._next < len(self._spans) and (before is None or self._spans[self._next][0] < before):
            _, start, end = self._spans[self._next]
            self._old.seek(start)
            write_whole(self._out, self._old.read(end - start))
            self._next += 1

    def _discard(self) -> None:
        with contextlib.suppress(OSError, AttributeError):
            self._out.close()
        with contextlib.suppress(OSError):
            os.unlink(self._tmp)
        self._old.close()


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
                raise FatalError(_header_problem(path, tuple(row), columns))
        elif len(row) != len(columns):
            raise FatalError(f"{path}: malformed CSV record near byte {start}; not resuming")
        else:
            yield dict(zip(columns, map(_uncell, row))), start, lines.offset
        start = lines.offset


def _header_problem(path: str, header: tuple[str, ...], columns: tuple[str, ...]) -> str:
    if header[: len(COLUMNS)] != COLUMNS:
        return f"{path}: not a capcli CSV (header {list(header)!r}); not resuming"
    missing = [c for c in columns if c not in header]
    extra = [c for c in header if c not in columns]
    parts = [f"this run adds the column(s) {', '.join(missing)}"] if missing else []
    parts += [f"the file has the column(s) {', '.join(extra)} this run does not write"] if extra else []
    return (
        f"{path}: {'; '.join(parts) or 'its columns are in another order'}: resume with the options that "
        "wrote it (--attention-dir, --tags, --num-captions, --id-col), or write a new file"
    )
