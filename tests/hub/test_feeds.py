"""Feed diffing on real documents: new or changed entries only, in the topic's own format."""

from __future__ import annotations

import codecs
import json
import random

import feedparser
import pytest

from hub import feeds
from tests.hub import documents
from tests.hub.corpus import CASES

ATOM, RSS, JSON = "application/atom+xml", "application/rss+xml", "application/feed+json"


def titles(doc: bytes | None) -> list[str]:
    assert doc is not None, "nothing delivered"
    return [e.title for e in feedparser.parse(doc).entries]


def delivered(result: feeds.FeedDiff) -> bytes:
    assert result.body is not None, "nothing delivered"
    return result.body


def test_atom_new_entries_only_keeping_the_feed():
    first = feeds.diff(documents.atom([1, 2]), ATOM, None)
    assert first.kind == "atom" and titles(first.body) == ["Entry 1", "Entry 2"]
    second = feeds.diff(documents.atom([3, 1, 2]), ATOM, first.entries)
    out = delivered(second)
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
    out = delivered(feeds.diff(documents.rss2([1, 2, 3]), RSS, first.entries))
    parsed = feedparser.parse(out)
    assert parsed.version == "rss20" and [e.title for e in parsed.entries] == ["Item 3"]
    assert parsed.feed.title == "Scripting News" and parsed.feed.link == "http://scripting.com/"
    no_guid = feeds.diff(documents.rss2([1, 2], guid=False), RSS, None)
    assert delivered(feeds.diff(documents.rss2([2, 4], guid=False), RSS, no_guid.entries)).count(b"<item>") == 1


def test_rss1_items_and_their_rdf_seq_entries():
    first = feeds.diff(documents.rss1([1, 2]), "application/rdf+xml", None)
    assert first.kind == "rdf"
    out = delivered(feeds.diff(documents.rss1([1, 2, 3]), "application/rdf+xml", first.entries))
    parsed = feedparser.parse(out)
    assert parsed.version == "rss10" and [e.title for e in parsed.entries] == ["Resource 3"]
    assert b"http://example.com/r/1" not in out and b'rdf:li rdf:resource="http://example.com/r/3"' in out
    assert parsed.feed.title == "RSS 1.0 feed"


def test_json_feed():
    first = feeds.diff(documents.json_feed([1, 2]), JSON, None)
    assert first.kind == "json"
    out = json.loads(delivered(feeds.diff(documents.json_feed([1, 2, 3]), JSON, first.entries)))
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


def rss(items: str, head: str = '<?xml version="1.0" encoding="UTF-8"?>') -> bytes:
    return f'{head}\n<rss version="2.0">\n  <channel>\n    <title>t</title>{items}\n  </channel>\n</rss>\n'.encode()


def item(title: str, *, guid: str = "", link: str = "", date: str = "", text: str = "") -> str:
    parts = [f"<title>{title}</title>"]
    parts += [f"<guid>{guid}</guid>"] if guid else []
    parts += [f"<link>{link}</link>"] if link else []
    parts += [f"<description>{text}</description>"] if text else []
    parts += [f"<pubDate>{date}</pubDate>"] if date else []
    return "\n    <item>" + "".join(parts) + "</item>"


def test_dates_rendered_anew_on_every_request_change_nothing():
    # Some publishers write "now" into every pubDate: the same entries, keyed by guid or by their
    # title and content (no guid, no link), are not sent again.
    def render(date: str) -> bytes:
        return rss(item("A", guid="a", date=date) + item("B", date=date, text="b body"))

    first = feeds.diff(render("Mon, 07 Dec 2026 10:00:00 GMT"), RSS, None)
    assert feeds.diff(render("Mon, 07 Dec 2026 10:01:00 GMT"), RSS, first.entries).body is None
    later = "Mon, 07 Dec 2026 10:02:00 GMT"
    edited = rss(item("A", guid="a", text="new", date=later) + item("B", text="b body", date=later))
    assert titles(feeds.diff(edited, RSS, first.entries).body) == ["A"]


def test_hashes_remembered_before_dates_were_left_out_still_match():
    # What an earlier hub remembered: each entry's key hash -> the hash of the entry as written.
    doc = rss(item("A", guid="a", date="Mon, 07 Dec 2026 10:00:00 GMT"))
    start = doc.index(b"<item>")
    end = doc.index(b"</item>") + len(b"</item>")
    remembered = {feeds.sha("a"): feeds.sha(doc[start:end])}
    assert feeds.diff(doc, RSS, remembered).body is None


def test_a_repeated_guid_is_one_entry_sent_once():
    doc = rss(item("A", guid="a") + item("B", guid="b") + item("A again", guid="a"))
    first = feeds.diff(doc, RSS, None)
    assert titles(first.body) == ["A", "B"] and len(first.entries) == 2
    assert feeds.diff(doc, RSS, first.entries).body is None
    more = rss(item("C", guid="c") + item("A", guid="a") + item("B", guid="b") + item("A again", guid="a"))
    assert titles(feeds.diff(more, RSS, first.entries).body) == ["C"]


def test_guidless_items_sharing_a_link_are_told_apart_by_their_text():
    link = "http://example.com/post#comments"
    doc = rss(item("First", link=link, text="1") + item("Second", link=link, text="2"))
    first = feeds.diff(doc, RSS, None)
    assert titles(first.body) == ["First", "Second"]
    assert feeds.diff(doc, RSS, first.entries).body is None
    more = rss(
        item("Third", link=link, text="3") + item("First", link=link, text="1") + item("Second", link=link, text="2")
    )
    assert titles(feeds.diff(more, RSS, first.entries).body) == ["Third"]
    # The very same item twice is one item.
    twice = rss(item("First", link=link, text="1") + item("First", link=link, text="1"))
    assert titles(feeds.diff(twice, RSS, None).body) == ["First"]


def test_multibyte_declaration_cut_in_its_own_encoding():
    doc = rss(item("東京", guid="a") + item("大阪", guid="b"), head='<?xml version="1.0" encoding="Shift_JIS"?>')
    sjis = doc.decode().encode("shift_jis")
    first = feeds.diff(sjis, RSS, None)
    assert first.encoding == "shift_jis" and first.body == sjis
    added = rss(
        item("京都", guid="c") + item("東京", guid="a") + item("大阪", guid="b"), head=doc.split(b"\n")[0].decode()
    )
    out = delivered(feeds.diff(added.decode().encode("shift_jis"), RSS, first.entries))
    assert out.startswith(b'<?xml version="1.0" encoding="Shift_JIS"?>')
    parsed = feedparser.parse(out)
    assert [e.title for e in parsed.entries] == ["京都"] and parsed.encoding == "shift_jis" and not parsed.bozo


def test_utf16_delivery_is_whole_characters():
    doc = documents.atom([1, 2]).decode().replace('encoding="utf-8"', 'encoding="UTF-16"')
    first = feeds.diff(doc.encode("utf-16"), ATOM, None)
    added = documents.atom([3, 1, 2]).decode().replace('encoding="utf-8"', 'encoding="UTF-16"')
    out = delivered(feeds.diff(added.encode("utf-16"), ATOM, first.entries))
    assert len(out) % 2 == 0 and out.startswith(b"\xff\xfe")
    assert titles(out) == ["Entry 3"] and not feedparser.parse(out).bozo


def test_json_feed_items_cut_as_written():
    def doc(ids: list[int]) -> bytes:
        items = ",\n".join(f'    {{"id": "{i}", "title": "T{i}", "_x": {{"big": 1e400, "n": 1.50}}}}' for i in ids)
        return (
            '\ufeff{\n  "version": "https://jsonfeed.org/version/1.1",\n  "title": "J",\n  "items": [\n'
            + items
            + "\n  ]\n}\n"
        ).encode()

    first = feeds.diff(doc([1, 2]), JSON, None)
    out = delivered(feeds.diff(doc([3, 1, 2]), JSON, first.entries))
    assert out == doc([3])[3:]  # the publisher's text, without the byte-order mark
    assert json.loads(out)["items"][0]["id"] == "3"


def test_entries_found_only_by_feedparser_go_out_whole_when_changed():
    # An item in a foreign default namespace: feedparser reads it, no span is found for it.
    def doc(title: str) -> bytes:
        return rss(f'\n    <item xmlns="http://example.com/x"><title>{title}</title><guid>g</guid></item>')

    first = feeds.diff(doc("A"), RSS, None)
    assert first.kind == "rss" and first.body == doc("A") and first.entries
    assert feeds.diff(doc("A"), RSS, first.entries).body is None
    assert feeds.diff(doc("B"), RSS, first.entries).body == doc("B")


def test_entries_read_one_by_one_when_feedparser_and_the_spans_disagree():
    # feedparser takes an atom:entry inside RSS for an entry too; the items are still diffed by guid.
    atom = "\n    <atom:entry><atom:title>Z</atom:title><atom:id>z</atom:id></atom:entry>"

    def doc(items: str) -> bytes:
        return rss(items + atom).replace(
            b'<rss version="2.0">', b'<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">'
        )

    first = feeds.diff(doc(item("A", guid="a")), RSS, None)
    assert feeds.diff(doc(item("A", guid="a")), RSS, first.entries).body is None
    out = delivered(feeds.diff(doc(item("B", guid="b") + item("A", guid="a")), RSS, first.entries))
    assert b"<title>B</title>" in out and b"<title>A</title>" not in out


def test_a_body_naming_a_file_is_not_opened(tmp_path):
    # Given bytes, feedparser would try them as a file name first.
    path = tmp_path / "feed.xml"
    path.write_bytes(documents.atom([1]))
    assert feeds.diff(str(path).encode(), ATOM, None).kind is None


def test_mislabelled_bytes_are_read_by_a_fallback():
    doc = rss(item("Caf\xe9", guid="a")).decode().encode("cp1252")  # declared UTF-8, written in windows-1252
    first = feeds.diff(doc, RSS, None)
    assert first.encoding == "cp1252" and first.body == doc
    assert feeds.diff(doc, RSS, first.entries).body is None


def test_damaged_corpus_feeds_never_raise():
    # Truncated, with bytes dropped, flipped or repeated: diff() answers, whatever it makes of it.
    rnd = random.Random(15)
    for case in CASES[:-1]:
        doc = case.document(2)
        known = feeds.diff(case.document(1), case.content_type, None).entries
        for _ in range(8):
            damaged = bytearray(doc)
            at = rnd.randrange(len(doc))
            op = rnd.choice(("truncate", "flip", "drop", "repeat"))
            if op == "truncate":
                del damaged[at:]
            elif op == "flip":
                damaged[at] = rnd.randrange(256)
            elif op == "drop":
                del damaged[at : at + rnd.randrange(1, 64)]
            else:
                damaged[at:at] = doc[max(0, at - 200) : at]
            result = feeds.diff(bytes(damaged), case.content_type, rnd.choice((None, known)))
            assert result.body is None or isinstance(result.body, bytes)


def test_rss1_repeated_item_keeps_the_rdf_li_of_its_first_occurrence():
    doc = documents.rss1([1, 2, 1])
    out = delivered(feeds.diff(doc, "application/rdf+xml", None))
    assert [e.title for e in feedparser.parse(out).entries] == ["Resource 1", "Resource 2"]
    assert out.count(b'rdf:li rdf:resource="http://example.com/r/1"') == 2  # as the publisher listed it


@pytest.mark.parametrize(
    ("label", "codec"), [("Windows-31J", "cp932"), ("x-sjis", "shift_jis"), ("x-mac-roman", "mac_roman")]
)
def test_labels_python_does_not_know_are_read(label, codec):
    doc = rss(
        item("東京" if codec != "mac_roman" else "Caf\xe9", guid="a"), head=f'<?xml version="1.0" encoding="{label}"?>'
    )
    result = feeds.diff(doc.decode().encode(codec), RSS, None)
    assert codecs.lookup(result.encoding or "").name == codecs.lookup(codec).name
    assert result.body == doc.decode().encode(codec)


def test_a_utf16_label_on_bytes_that_are_not_utf16_is_not_believed():
    doc = rss(item("Caf\xe9", guid="a"))  # UTF-8, served as UTF-16
    result = feeds.diff(doc, "application/rss+xml; charset=utf-16", None)
    assert result.encoding == "utf-8" and result.body == doc
