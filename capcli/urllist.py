"""Read URL lists: plain lines, CSV, TSV or JSONL, streamed one entry at a time.

Plain lists hold one URL per line; blank lines and lines starting with ``#``
are skipped. Tables (CSV/TSV with a header row, or JSONL objects) name the URL
column (``url`` unless told otherwise) and optionally an id column whose value
is passed through to the output record. CRLF line ends and a UTF-8 byte-order
mark are tolerated everywhere. A row that holds no usable URL becomes an entry
carrying an ItemError, so it still yields its one output record.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from capcli.errors import ItemError, UsageError

FORMATS = ("auto", "lines", "csv", "tsv", "jsonl")
_BY_SUFFIX = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_SNIFF_BYTES = 64 * 1024


class UrlListError(UsageError):
    """The list as a whole cannot be read as asked (a usage error, exit 2)."""


@dataclass(frozen=True)
class UrlEntry:
    source: str  # the URL, or a "line N" placeholder when the row has none
    url: str | None
    id: object = None  # the id column's value (JSONL keeps its JSON type)
    error: ItemError | None = None


class UrlList:
    """An open URL list; the format and the header are checked on construction,
    so a bad ``--url-col`` fails before any work starts."""

    def __init__(
        self,
        stream: BinaryIO,
        *,
        name: str = "-",
        fmt: str = "auto",
        url_col: str | None = None,
        id_col: str | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise UrlListError(f"unknown list format {fmt!r} (choose from {', '.join(FORMATS)})")
        self._raw = io.BufferedReader(stream) if not hasattr(stream, "peek") else stream
        self.format = fmt if fmt != "auto" else self._detect(name, url_col or id_col)
        if self.format == "lines" and (url_col or id_col):
            raise UrlListError("--url-col and --id-col need a CSV, TSV or JSONL list")
        self.url_col = url_col or "url"
        self.id_col = id_col
        self._text = io.TextIOWrapper(self._raw, encoding="utf-8-sig", errors="surrogateescape", newline="")
        self._rows: Iterator[list[str]] | None = None
        self._url_at = self._id_at = -1
        if self.format in ("csv", "tsv"):
            self._read_header()

    def _detect(self, name: str, columns_named: str | None) -> str:
        suffix = os.path.splitext(name)[1].lower()
        if suffix in _BY_SUFFIX:
            return _BY_SUFFIX[suffix]
        head = self._raw.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
        head = head.removeprefix(codecs.BOM_UTF8).lstrip()
        if head.startswith(b"{"):
            return "jsonl"
        if columns_named:  # a table on stdin or with an unusual suffix
            first = head.split(b"\n", 1)[0]
            return "tsv" if b"\t" in first else "csv"
        return "lines"

    def _read_header(self) -> None:
        self._rows = csv.reader(self._text, delimiter="\t" if self.format == "tsv" else ",")
        header = next(self._rows, None)
        if header is None:
            raise UrlListError(f"the {self.format.upper()} list is empty (no header row)")
        header = [h.strip() for h in header]
        self._url_at = _column(header, self.url_col, "--url-col")
        if self.id_col is not None:
            self._id_at = _column(header, self.id_col, "--id-col")

    def __iter__(self) -> Iterator[UrlEntry]:
        if self.format == "lines":
            return self._lines()
        if self.format == "jsonl":
            return self._jsonl()
        return self._table()

    def _lines(self) -> Iterator[UrlEntry]:
        for line in self._text:
            text = line.strip()
            if text and not text.startswith("#"):
                yield UrlEntry(text, text)

    def _table(self) -> Iterator[UrlEntry]:
        assert self._rows is not None
        for row in self._rows:
            if not any(cell.strip() for cell in row):
                continue  # a blank line
            where = f"line {self._rows.line_num}"
            ident = _cell(row, self._id_at) if self._id_at >= 0 else None
            url = _cell(row, self._url_at)
            if not url:
                error = ItemError("invalid_url", f"{where}: no URL in column {self.url_col!r}")
                yield UrlEntry(where, None, ident, error)
            else:
                yield UrlEntry(url, url, ident)

    def _jsonl(self) -> Iterator[UrlEntry]:
        for number, line in enumerate(self._text, start=1):
            if not line.strip():
                continue
            where = f"line {number}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                yield UrlEntry(where, None, None, ItemError("invalid_input", f"{where}: not JSON ({exc})"))
                continue
            if not isinstance(record, dict):
                yield UrlEntry(where, None, None, ItemError("invalid_input", f"{where}: not a JSON object"))
                continue
            ident = record.get(self.id_col) if self.id_col else None
            url = record.get(self.url_col)
            if isinstance(url, str) and url.strip():
                yield UrlEntry(url.strip(), url.strip(), ident)
            else:
                problem = "no" if url is None else "a non-string"
                error = ItemError("invalid_url", f"{where}: {problem} {self.url_col!r} field")
                yield UrlEntry(where, None, ident, error)


def _column(header: list[str], wanted: str, option: str) -> int:
    if wanted in header:
        return header.index(wanted)
    folded = [h.casefold() for h in header]
    if folded.count(wanted.casefold()) == 1:
        return folded.index(wanted.casefold())
    shown = ", ".join(repr(h) for h in header)
    raise UrlListError(f"no column {wanted!r} for {option}; the header has {shown}")


def _cell(row: list[str], at: int) -> str:
    return row[at].strip() if at < len(row) else ""
