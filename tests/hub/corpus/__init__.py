"""The feed corpus: real-world-shaped feeds, each as the three documents its publisher serves in
turn, and the entries each one delivers (``make_corpus.py`` writes them; ``cases.json`` lists them).

Version 1 is the baseline (delivered whole when there is none), version 2 adds an entry and edits
one, version 3 adds another and edits another. The 500-entry feed is made here, not stored.
"""

from __future__ import annotations

import codecs
import io
import json
from dataclasses import dataclass
from pathlib import Path

import feedparser

from hub.feeds_charset import codec_name

HERE = Path(__file__).parent
BIG = "rss2-500-entries"


@dataclass(frozen=True)
class Case:
    name: str
    content_type: str
    codec: str
    files: tuple[str, ...]
    expected: tuple[tuple[str, ...], ...]
    note: str = ""

    def document(self, step: int) -> bytes:
        """The document the publisher serves at ``step`` (1, 2 or 3)."""
        if self.name == BIG:
            return big_feed(step)
        return (HERE / self.files[step - 1]).read_bytes()

    def text(self, document: bytes) -> str:
        """``document`` decoded strictly in this case's encoding, past its byte-order mark."""
        for bom in (
            codecs.BOM_UTF32_LE,
            codecs.BOM_UTF32_BE,
            codecs.BOM_UTF8,
            codecs.BOM_UTF16_LE,
            codecs.BOM_UTF16_BE,
        ):
            if document.startswith(bom) and codecs.lookup(self.codec).name.startswith(_family(bom)):
                document = document[len(bom) :]
                break
        return document.decode(self.codec)

    def __str__(self) -> str:
        return self.name


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


def _family(bom: bytes) -> str:
    return {3: "utf-8", 2: "utf-16", 4: "utf-32"}[len(bom)]


def big_feed(step: int) -> bytes:
    """An RSS 2.0 feed of 500 items; step 2 adds item 501 and edits 250, step 3 adds 502 and edits 100."""
    numbers = {1: range(500, 0, -1), 2: range(501, 0, -1), 3: range(502, 0, -1)}[step]
    edited = {250} if step == 2 else {250, 100} if step == 3 else set()
    items = "".join(
        f"""
    <item>
      <title>Item {n}{" (edited)" if n in edited else ""}</title>
      <link>https://news.example.com/{n}</link>
      <guid isPermaLink="true">https://news.example.com/{n}</guid>
      <description>Story {n} &amp; its summary.</description>
      <pubDate>Sun, 06 Dec 2026 {n % 24:02d}:{n % 60:02d}:00 GMT</pubDate>
    </item>"""
        for n in numbers
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0">
  <channel>
    <title>A busy news site</title>
    <link>https://news.example.com/</link>
    <description>Five hundred items in one feed</description>{items}
  </channel>
</rss>
""".encode()


def _load() -> list[Case]:
    cases = [
        Case(c["name"], c["content_type"], c["codec"], tuple(c["files"]), tuple(map(tuple, c["expected"])), c["note"])
        for c in json.loads((HERE / "cases.json").read_text(encoding="utf-8"))
    ]
    big = (
        tuple(f"Item {n}" for n in range(500, 0, -1)),
        ("Item 501", "Item 250 (edited)"),
        ("Item 502", "Item 100 (edited)"),
    )
    return [*cases, Case(BIG, "application/rss+xml", "utf-8", (), big, "500 items")]


CASES = _load()
