"""URL list parsing: plain lines, CSV, TSV, JSONL; BOM, CRLF, comments, ids."""

from __future__ import annotations

import io

import pytest

from capcli.urllist import UrlEntry, UrlList, UrlListError


def read(data: bytes, **kwargs: object) -> list[UrlEntry]:
    return list(UrlList(io.BytesIO(data), **kwargs))  # type: ignore[arg-type]


def urls(entries: list[UrlEntry]) -> list[str | None]:
    return [e.url for e in entries]


def test_plain_lines_skip_blanks_and_comments_with_bom_and_crlf() -> None:
    data = (
        b"\xef\xbb\xbfhttp://a.example/1.jpg\r\n"
        b"\r\n"
        b"# a comment\r\n"
        b"   https://b.example/2.png?x=1#frag  \r\n"
        b"  # indented comment\n"
        b"http://c.example/3.jpg"  # no final newline
    )
    got = read(data)
    assert urls(got) == ["http://a.example/1.jpg", "https://b.example/2.png?x=1#frag", "http://c.example/3.jpg"]
    assert all(e.source == e.url and e.error is None and e.id is None for e in got)


def test_plain_lines_keep_undecodable_bytes_for_an_error_record() -> None:
    (entry,) = read(b"http://a.example/\xff.jpg\n")
    assert entry.url is not None and "\udcff" in entry.url  # fetch reports invalid_url


def test_csv_with_url_and_id_columns() -> None:
    data = (
        b"\xef\xbb\xbfid,URL,title\r\n"
        b'p1,http://a.example/1.jpg,"A, quoted\r\ntitle"\r\n'
        b"\r\n"
        b"p2,,missing\r\n"
        b"p3,  http://b.example/2.jpg  \r\n"
    )
    got = read(data, name="list.csv", id_col="id")  # "url" found case-insensitively
    assert [(e.url, e.id) for e in got] == [
        ("http://a.example/1.jpg", "p1"),
        (None, "p2"),
        ("http://b.example/2.jpg", "p3"),
    ]
    assert got[1].error is not None and got[1].error.kind == "invalid_url"
    assert got[1].source == "line 5"  # physical line, counting the multi-line cell and the blank


def test_tsv_by_suffix_and_named_column() -> None:
    data = b"name\tlink\nx\thttp://a.example/1.jpg\ny\thttp://b.example/2.jpg\n"
    got = read(data, name="LIST.TSV", url_col="link", id_col="name")
    assert [(e.url, e.id) for e in got] == [("http://a.example/1.jpg", "x"), ("http://b.example/2.jpg", "y")]


def test_table_on_stdin_is_sniffed_when_a_column_is_named() -> None:
    assert urls(read(b"k\tu\n1\thttp://a.example/\n", url_col="u")) == ["http://a.example/"]
    assert urls(read(b"k,u\n1,http://a.example/\n", url_col="u")) == ["http://a.example/"]


def test_jsonl_keeps_id_types_and_reports_bad_lines() -> None:
    data = (
        b'\xef\xbb\xbf{"url": "http://a.example/1.jpg", "id": 7}\r\n'
        b"\r\n"
        b"not json\r\n"
        b"[1, 2]\n"
        b'{"id": "no-url"}\n'
        b'{"url": 5, "id": null}\n'
        b'{"url": "http://b.example/2.jpg", "id": "b"}\n'
    )
    got = read(data, id_col="id")  # JSONL sniffed from the first "{"
    assert [(e.url, e.id) for e in got] == [
        ("http://a.example/1.jpg", 7),
        (None, None),
        (None, None),
        (None, "no-url"),
        (None, None),
        ("http://b.example/2.jpg", "b"),
    ]
    kinds = [e.error.kind if e.error else None for e in got]
    assert kinds == [None, "invalid_input", "invalid_input", "invalid_url", "invalid_url", None]
    assert [e.source for e in got[1:5]] == ["line 3", "line 4", "line 5", "line 6"]


def test_explicit_format_wins_over_the_suffix() -> None:
    got = read(b"http://a.example/x.jpg\n", name="urls.csv", fmt="lines")
    assert urls(got) == ["http://a.example/x.jpg"]


@pytest.mark.parametrize(
    ("data", "kwargs", "needle"),
    [
        (b"id,link\n1,http://a/\n", {"name": "a.csv"}, "no column 'url'"),
        (b"url\nhttp://a/\n", {"name": "a.csv", "id_col": "key"}, "--id-col"),
        (b"", {"name": "a.csv"}, "empty"),
        (b"http://a/\n", {"url_col": "u", "fmt": "lines"}, "need a CSV"),
        (b"http://a/\n", {"fmt": "xml"}, "unknown list format"),
    ],
)
def test_list_level_problems_fail_before_any_entry(data: bytes, kwargs: dict, needle: str) -> None:
    with pytest.raises(UrlListError) as info:
        UrlList(io.BytesIO(data), **kwargs)
    assert needle in str(info.value)


def test_entries_are_streamed() -> None:
    class Endless(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:  # type: ignore[override]
            line = b"http://a.example/x.jpg\n"
            n = len(buffer) // len(line) * len(line)
            buffer[:n] = line * (n // len(line))
            return n

    entries = iter(UrlList(io.BufferedReader(Endless())))
    assert [next(entries).url for _ in range(3)] == ["http://a.example/x.jpg"] * 3
