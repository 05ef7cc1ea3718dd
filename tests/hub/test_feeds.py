"""Feed diffing on real documents: new or changed entries only, in the topic's own format."""

from __future__ import annotations

import json

import feedparser
import pytest

from hub import feeds
from tests.hub import documents

ATOM, RSS, JSON = "application/atom+xml", "application/rss+xml", "application/feed+json"


def titles(doc: bytes) -> list[str]:
    return [e.title for e in feedparser.parse(doc).entries]


def test_atom_new_entries_only_keeping_the_feed():
    first = feeds.diff(documents.atom([1, 2]), ATOM, None)
    assert first.kind == "atom" and titles(first.body) == ["Entry 1", "Entry 2"]
    second = feeds.diff(documents.atom([3, 1, 2]), ATOM, first.entries)
    out = second.body
    assert titles(out) == ["Entry 3"]
    parsed = feedparser.parse(out)
    assert parsed.version == "atom10" and not parsed.bozo
    assert parsed.feed.title == "Example Feed" and parsed.feed.subtitle == "A subtitle."
    assert parsed.feed.author == "John Doe"
    # Byte for byte, apart from the entries cut out: declaration, namespace prefixes, order.
    assert out.startswith(b'<?xml version="1.0" encoding="utf-8"?>\n<feed xmlns="http://www.w3.org/2005/Atom"')
    assert b'xmlns:media="http://search.yahoo.com/mrss/"' in out


def test_atom_changed_entry_goes_out_again():
    first = feeds.diff(documents.atom([1, 2]), ATOM, None)
    same = feeds.diff(documents.atom([1, 2]), ATOM, first.entries)
    assert same.body is None
    changed = feeds.diff(documents.atom([1, 2], changed={2: "Corrected"}), ATOM, first.entries)
    assert titles(changed.body) == ["Entry 2"]
    assert feedparser.parse(changed.body).entries[0].summary == "Corrected"


def test_rss2_keyed_by_guid_then_link():
    first = feeds.diff(documents.rss2([1, 2]), RSS, None)
    assert first.kind == "rss"
    out = feeds.diff(documents.rss2([1, 2, 3]), RSS, first.entries).body
    parsed = feedparser.parse(out)
    assert parsed.version == "rss20" and [e.title for e in parsed.entries] == ["Item 3"]
    assert parsed.feed.title == "Scripting News" and parsed.feed.link == "http://scripting.com/"
    no_guid = feeds.diff(documents.rss2([1, 2], guid=False), RSS, None)
    assert feeds.diff(documents.rss2([2, 4], guid=False), RSS, no_guid.entries).body.count(b"<item>") == 1


def test_rss1_items_and_their_rdf_seq_entries():
    first = feeds.diff(documents.rss1([1, 2]), "application/rdf+xml", None)
    assert first.kind == "rdf"
    out = feeds.diff(documents.rss1([1, 2, 3]), "application/rdf+xml", first.entries).body
    parsed = feedparser.parse(out)
    assert parsed.version == "rss10" and [e.title for e in parsed.entries] == ["Resource 3"]
    assert b"http://example.com/r/1" not in out and b'rdf:li rdf:resource="http://example.com/r/3"' in out
    assert parsed.feed.title == "RSS 1.0 feed"


def test_json_feed():
    first = feeds.diff(documents.json_feed([1, 2]), JSON, None)
    assert first.kind == "json"
    out = json.loads(feeds.diff(documents.json_feed([1, 2, 3]), JSON, first.entries).body)
    assert [i["id"] for i in out["items"]] == ["j3"]
    assert out["title"] == "My JSON Feed" and out["version"].startswith("https://jsonfeed.org/version/1")


def test_not_a_feed():
    d = feeds.diff(b"<html><body>hi</body></html>", "text/html", None)
    assert d.kind is None and d.body is None


def test_sup_link_is_found():
    link = (
        '\n  <link rel="http://api.friendfeed.com/2008/08/24#sup" href="http://pub.test/sup.json#abc"'
        ' type="application/json"/>'
    )
    assert feeds.diff(documents.atom([1], extra_head=link), ATOM, None).sup == "http://pub.test/sup.json#abc"


@pytest.mark.parametrize("doc", [b"<feed><entry>", b"\x00\x01", b"<?xml version='1.0'?><rss><channel><item>"])
def test_broken_documents_do_not_raise(doc):
    feeds.diff(doc, "application/xml", None)
