"""Every feed of the corpus through diff() three times, as a hub meets it: the baseline (no entries
known: everything, each entry once), then a new and an edited entry, then another of each, then the
same document again (nothing). Each delivered document must hold exactly the expected entries, be
the publisher's own text with entries cut out, and read as its format in its declared encoding."""

from __future__ import annotations

import pytest

from hub import feeds
from hub.feeds_charset import codec_name
from tests.hub.corpus import CASES, Case, check_delivery, titles


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
