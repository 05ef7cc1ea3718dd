"""Every feed of the corpus through diff() three times, as a hub meets it: the baseline (no entries
known: everything, each entry once), then a new and an edited entry, then another of each, then the
same document again (nothing). Each delivered document must hold exactly the expected entries, be
the publisher's own text with entries cut out, and read as its format in its declared encoding."""

from __future__ import annotations

import io
import json

import feedparser
import pytest

from hub import feeds
from hub.feeds_charset import codec_name
from tests.hub.corpus import CASES, Case

UTF8_XML = {"content-type": "application/xml; charset=utf-8"}


def parse(document: bytes, content_type: str) -> feedparser.FeedParserDict:
    return feedparser.parse(io.BytesIO(document), response_headers={"content-type": content_type})


def titles(case: Case, document: bytes) -> list[str]:
    """The entries' titles as the document's own encoding reads them (not feedparser's guess)."""
    text = case.text(document)
    if "json" in case.content_type:
        return [item["title"] for item in json.loads(text)["items"]]
    return [e.title for e in feedparser.parse(io.BytesIO(text.encode("utf-8")), response_headers=UTF8_XML).entries]


def check_delivery(case: Case, fetched: bytes, out: bytes) -> None:
    # Cut, not rewritten: every line delivered is a line the publisher wrote, the first one first.
    out_lines, in_lines = case.text(out).splitlines(), case.text(fetched).splitlines()
    assert set(out_lines) <= set(in_lines)
    assert out_lines[0] == in_lines[0]
    if "json" in case.content_type:
        doc = json.loads(out)  # strict JSON (RFC 8259): no byte-order mark, no Infinity
        assert doc["version"].startswith("https://jsonfeed.org/version/")
        if b"1e400" in fetched:
            assert b'"views": 1e400' in out and b"1234567890123456789012345678901234567890" in out
        return
    # What a subscriber's feedparser makes of it, given the topic's Content-Type: the same format,
    # the same encoding as the fetched document, and well-formed when that was.
    theirs, ours = parse(fetched, case.content_type), parse(out, case.content_type)
    assert ours.version == theirs.version
    assert codec_name(ours.encoding or "") == codec_name(theirs.encoding or "")
    assert bool(ours.bozo) <= bool(theirs.bozo), ours.get("bozo_exception")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_each_entry_once_in_the_publishers_encoding(case: Case) -> None:
    known = None
    for step, expected in enumerate(case.expected, start=1):
        fetched = case.document(step)
        result = feeds.diff(fetched, case.content_type, known)
        assert result.kind is not None and result.body is not None, f"step {step}: nothing delivered"
        assert titles(case, result.body) == list(expected), f"step {step}"
        check_delivery(case, fetched, result.body)
        known = result.entries
    again = feeds.diff(fetched, case.content_type, known)
    assert again.body is None and again.entries == known


@pytest.mark.parametrize("case", [c for c in CASES if c.codec not in ("utf-8", "latin_1", "iso8859_1")], ids=str)
def test_read_in_the_encoding_it_is_written_in(case: Case) -> None:
    result = feeds.diff(case.document(1), case.content_type, None)
    # A GBK feed labelled GB2312 is read as GBK, a Windows-31J one labelled Shift_JIS as Windows-31J.
    assert codec_name(result.encoding or "") == codec_name(case.codec)
