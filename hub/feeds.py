"""Feed diffing: what of a fetched topic is new since the hub last distributed it.

PubSubHubbub 0.4 (7.2): for Atom and RSS the hub distributes only entries it has not distributed
before, as a document of the topic's own format. Here: Atom, RSS 2.0 and RSS 1.0 (RDF) are
recognised by feedparser, which also gives each entry's key (id/guid, else link); JSON Feed
(``version`` https://jsonfeed.org/version/1[.1]) is read with ``json``, because feedparser 6.0 does
not know it, keyed by item ``id``, else ``url``. An entry is
new when its key is unknown and changed when its content hash differs. The document that goes out
is the fetched one with every other entry cut out byte for byte, so feed-level elements, namespace
prefixes and the XML declaration stay exactly as the publisher wrote them. Any other content type
is distributed whole whenever its body changes.

Entry spans come from expat (the parser of the standard library; expat >= 2.4 refuses entity
expansion bombs and resolves no external entities).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

ATOM = "http://www.w3.org/2005/Atom"
RSS1 = "http://purl.org/rss/1.0/"
RSS090 = "http://my.netscape.com/rdf/simple/0.9/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
SUP_REL_SUFFIX = "#sup"


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass
class FeedDiff:
    """``body`` is the document to distribute (None: nothing new); ``entries`` maps every current
    entry's key hash to its content hash (to remember); ``sup`` is an advertised SUP link href."""

    kind: str | None
    body: bytes | None
    entries: dict[str, str] = field(default_factory=dict)
    sup: str | None = None


def is_feed_type(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct.endswith("xml") or ct.endswith("+json") or ct in ("application/json", "application/feed+json")


def diff(body: bytes, content_type: str, known: dict[str, str] | None) -> FeedDiff:
    """Entries of ``body`` not in ``known`` (None: distribute all). Non-feeds give ``kind`` None."""
    if body.lstrip()[:1] == b"{":
        # feedparser 6.0 has no JSON Feed support (it arrives in later releases): read it here.
        return _diff_json(body, known, None)
    import feedparser  # heavy; only loaded once the hub fetches a topic

    parsed = feedparser.parse(body, response_headers={"content-type": content_type})
    version = parsed.get("version") or ""
    sup = _sup_link(parsed)
    if version.startswith("json"):
        return _diff_json(body, known, sup)
    if version.startswith("atom"):
        kind = "atom"
    elif version in ("rss10", "rss090"):
        kind = "rdf"
    elif version.startswith("rss"):
        kind = "rss"
    else:
        return FeedDiff(None, None, sup=sup)
    spans = _entry_spans(body)
    entries = parsed.entries
    if len(spans) != len(entries):
        # feedparser and expat disagree (a broken document): distribute it whole, remember nothing.
        return FeedDiff(kind, body, sup=sup)
    current: dict[str, str] = {}
    keep: list[bool] = []
    for entry, (start, end, about) in zip(entries, spans, strict=True):
        key = entry.get("id") or entry.get("guid") or entry.get("link") or about
        content = sha(body[start:end])
        key_hash = sha(key) if key else content
        current[key_hash] = content
        keep.append(known is None or known.get(key_hash) != content)
    if not any(keep):
        return FeedDiff(kind, None, current, sup)
    return FeedDiff(kind, _cut(body, spans, keep, kind), current, sup)


def _sup_link(parsed: Any) -> str | None:
    for link in parsed.get("feed", {}).get("links", []) or []:
        if str(link.get("rel", "")).endswith(SUP_REL_SUFFIX) and link.get("href"):
            return str(link["href"])
    return None


def _entry_spans(body: bytes) -> list[tuple[int, int, str | None]]:
    """Byte spans ``[start, end)`` of the top-level entries/items, with an RSS 1.0 ``rdf:about``."""
    from xml.parsers import expat

    parser = expat.ParserCreate(namespace_separator=" ")
    spans: list[tuple[int, int, str | None]] = []
    depth = 0
    open_at: tuple[int, int, str | None] | None = None  # (depth, start, about)

    def is_entry(name: str) -> bool:
        ns, _, local = name.rpartition(" ")
        return (local == "entry" and ns == ATOM) or (local == "item" and ns in ("", RSS1, RSS090))

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth, open_at
        depth += 1
        if open_at is None and depth <= 3 and is_entry(name):
            open_at = (depth, parser.CurrentByteIndex, attrs.get(RDF + " about"))

    def end(name: str) -> None:
        nonlocal depth, open_at
        if open_at is not None and open_at[0] == depth:
            at = parser.CurrentByteIndex
            # At an end tag the index points at "</"; for an empty element <item/> it points at
            # the start tag itself. Either way the element ends at the next ">".
            stop = body.index(b">", max(at, open_at[1])) + 1
            spans.append((open_at[1], stop, open_at[2]))
            open_at = None
        depth -= 1

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(body, True)
    except expat.ExpatError:
        return []
    return spans


def _cut(body: bytes, spans: list[tuple[int, int, str | None]], keep: list[bool], kind: str) -> bytes:
    out = bytearray()
    pos = 0
    dropped_about = []
    for (start, end, about), k in zip(spans, keep, strict=True):
        if k:
            continue
        # Take the whitespace before a dropped element with it, so the output stays tidy.
        cut_from = start
        while cut_from > pos and body[cut_from - 1 : cut_from] in (b" ", b"\t", b"\n", b"\r"):
            cut_from -= 1
        out += body[pos:cut_from]
        pos = end
        if about:
            dropped_about.append(about)
    out += body[pos:]
    doc = bytes(out)
    if kind == "rdf" and dropped_about:
        doc = _drop_rdf_li(doc, dropped_about)
    return doc


def _drop_rdf_li(doc: bytes, abouts: list[str]) -> bytes:
    """RSS 1.0 lists its items again in channel/items/rdf:Seq; drop the ``rdf:li`` of cut items."""
    import re

    for about in abouts:
        for quoted in (about.encode(), about.replace("&", "&amp;").encode()):
            doc = re.sub(rb"\s*<[\w.-]*:?li\s+[\w.-]*:?resource=[\"']" + re.escape(quoted) + rb"[\"']\s*/>", b"", doc)
    return doc


def _diff_json(body: bytes, known: dict[str, str] | None, sup: str | None) -> FeedDiff:
    try:
        doc = json.loads(body)
    except ValueError:
        return FeedDiff(None, None, sup=sup)
    items = doc.get("items") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not str(doc.get("version", "")).startswith("https://jsonfeed.org/version/"):
        return FeedDiff(None, None, sup=sup)
    current: dict[str, str] = {}
    new_items = []
    for item in items:
        content = sha(json.dumps(item, sort_keys=True, separators=(",", ":")))
        key = (item.get("id") or item.get("url")) if isinstance(item, dict) else None
        key_hash = sha(str(key)) if key else content
        current[key_hash] = content
        if known is None or known.get(key_hash) != content:
            new_items.append(item)
    if not new_items:
        return FeedDiff("json", None, current, sup)
    out = dict(doc, items=new_items)
    return FeedDiff("json", json.dumps(out, ensure_ascii=False).encode(), current, sup)
