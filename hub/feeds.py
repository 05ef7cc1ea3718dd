"""Feed diffing: what of a fetched topic is new since the hub last distributed it.

PubSubHubbub 0.4 (7.2): for Atom and RSS the hub distributes only entries it has not distributed
before, as a document of the topic's own format. Atom 1.0 and 0.3, RSS 0.9x/2.0 (also under
Userland's RSS 2.0 namespace) and RSS 1.0/0.9 (RDF) are recognised by feedparser, which also gives
each entry's key; JSON Feed is read by :mod:`hub.feeds_json`. Any other content type is distributed
whole whenever its body changes.

A document in any encoding Python knows is decoded first (:mod:`hub.feeds_charset`); entries are
found by their offsets in its text (:mod:`hub.feeds_spans`), expat for a well-formed document and a
tag scanner for one only feedparser's loose parser reads. The document that goes out is the fetched
one with every other entry cut out, in the publisher's own encoding, so the XML declaration,
feed-level elements and namespace prefixes stay exactly as written.

Keys (what makes an entry "the same entry" from one fetch to the next): its id (Atom ``id``, RSS
``guid``), else its link, else its RSS 1.0 ``rdf:about``, else a hash of its title and content
(never of its dates, which some publishers render anew on every request). Id-less entries that share
one link are told apart by that hash too. A key seen twice in one document is one entry: the first is
kept and the others are neither delivered nor remembered. An entry is new when its key is unknown
and changed when the hash of its text differs from the one remembered.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hub import feeds_json
from hub.feeds_charset import Decoded, decode
from hub.feeds_spans import ATOM, RSS1, Span, loose_spans, strict_spans

logger = logging.getLogger(__name__)

SUP_REL_SUFFIX = "#sup"
# feedparser is handed the decoded text as UTF-8, whatever the publisher's encoding was.
UTF8_XML = "application/xml; charset=utf-8"
# A lone entry re-wrapped to be read on its own, when the whole document's entries and the spans
# found disagree (a document broken beyond what both readers agree on).
WRAPPERS = {
    "atom": (f'<feed xmlns="{ATOM}">'.encode(), b"</feed>"),
    "rss": (b'<rss version="2.0"><channel>', b"</channel></rss>"),
    "rdf": (
        f'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="{RSS1}">'.encode(),
        b"</rdf:RDF>",
    ),
}


# An entry's dates, left out of the hash that tells whether it changed (see _content).
DATES = re.compile(
    rb"(<(?:[\w.-]+:)?(?:pubDate|updated|modified|issued|published|created|date)(?:\s[^>]*)?>)[^<]*(?=</)"
)
JSON_DATES = ("date_published", "date_modified")
FEEDPARSER_DATES = frozenset(
    f"{name}{suffix}" for name in ("published", "updated", "created", "expired") for suffix in ("", "_parsed")
)


def sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


@dataclass
class FeedDiff:
    """``body`` is the document to distribute (None: nothing new); ``entries`` maps every current
    entry's key hash to its content hash (to remember); ``sup`` is an advertised SUP link href;
    ``encoding`` the Python codec the document was read with; ``bozo`` whether it was not
    well-formed (feedparser's word: read by its loose parser)."""

    kind: str | None
    body: bytes | None
    entries: dict[str, str] = field(default_factory=dict)
    sup: str | None = None
    encoding: str | None = None
    bozo: bool = False


def is_feed_type(content_type: str) -> bool:
    ct = content_type.split(";", 1)[0].strip().lower()
    return ct.endswith("xml") or ct.endswith("+json") or ct in ("application/json", "application/feed+json")


def diff(body: bytes, content_type: str, known: dict[str, str] | None) -> FeedDiff:
    """Entries of ``body`` not in ``known`` (None: distribute all). Non-feeds give ``kind`` None.

    Never raises for what a publisher serves: a document no reader makes a feed of is not a feed."""
    if _looks_like_json(body):
        found = feeds_json.read(body)
        return _diff_json(found, known) if found is not None else FeedDiff(None, None)
    import feedparser  # heavy; only loaded once the hub fetches a topic

    decoded = decode(body, content_type)
    data = decoded.utf8
    # A file object: given bytes, feedparser would first try them as a file name to open.
    parsed = feedparser.parse(io.BytesIO(data), response_headers={"content-type": UTF8_XML})
    version = parsed.get("version") or ""
    sup = _sup_link(parsed)
    if version.startswith("json"):
        found = feeds_json.read(body)
        return _diff_json(found, known, sup) if found is not None else FeedDiff(None, None, sup=sup)
    if version.startswith("atom"):
        kind = "atom"
    elif version in ("rss10", "rss090"):
        kind = "rdf"
    elif version.startswith("rss"):
        kind = "rss"
    else:
        return FeedDiff(None, None, sup=sup, encoding=decoded.codec)
    spans = strict_spans(data, kind)
    bozo = spans is None or bool(parsed.get("bozo"))
    if spans is None:
        spans = loose_spans(data, kind)
    entries: Sequence[Any] = parsed.entries
    result = FeedDiff(kind, None, sup=sup, encoding=decoded.codec, bozo=bozo)
    if not spans:
        return _diff_whole(result, body, entries, known)
    if len(spans) != len(entries):
        logger.debug("feed entries (%d) and spans (%d) disagree: reading each entry alone", len(entries), len(spans))
        entries = [_read_alone(data[span.start : span.end], kind) for span in spans]
    keys = entry_keys([_identity(entry, span.about) for entry, span in zip(entries, spans, strict=True)])
    keep = _remember(result, keys, [_content(decoded, data, span) for span in spans], known)
    if any(keep):
        cut = _cut(data, spans, keep, kind)
        result.body = decoded.bom + cut if decoded.codec == "utf-8" else decoded.encode(cut.decode("utf-8"))
    return result


def entry_keys(identities: Sequence[tuple[str, str, str]]) -> list[str]:
    """Each entry's key from its ``(id, link, stable)``: see the module docstring."""
    shared = Counter(link for ident, link, _ in identities if not ident and link)
    keys = []
    for ident, link, stable in identities:
        if ident:
            keys.append(ident)
        elif link:
            keys.append(link if shared[link] == 1 else f"{link}\n{stable}")
        else:
            keys.append(f"\n{stable}")
    return keys


def _remember(
    result: FeedDiff, keys: list[str], contents: list[tuple[str, str]], known: dict[str, str] | None
) -> list[bool]:
    """Record each key's content hash in ``result``; which entries go out (the first of a key, if
    new or changed).

    ``contents`` holds two hashes per entry: of its text without its dates (remembered) and of its
    text as written, which is what the hub remembered before dates were left out; either one
    matching means unchanged, so no entry goes out again for the change of what is remembered."""
    keep = []
    for key, (content, written) in zip(keys, contents, strict=True):
        key_hash = sha(key)
        if key_hash in result.entries:
            keep.append(False)
            continue
        result.entries[key_hash] = content
        keep.append(known is None or known.get(key_hash) not in (content, written))
    return keep


def _identity(entry: Any, about: str | None) -> tuple[str, str, str]:
    """``(id, link, stable)`` of a feedparser entry; an RSS 1.0 ``rdf:about`` stands in for a link."""
    ident = str(entry.get("id") or "").strip()
    link = str(entry.get("link") or about or "").strip()
    contents = [str(c.get("value", "")) for c in entry.get("content") or []]
    stable = sha("\0".join([str(entry.get("title", "")), str(entry.get("summary", "")), *contents]))
    return ident, link, stable


def _content(decoded: Decoded, data: bytes, span: Span) -> tuple[str, str]:
    """The hashes of an entry's text without its dates and as written (see :func:`_remember`).

    Dates are left out because some publishers render them anew on every request (a ``pubDate`` of
    "now"): such an entry is the same entry, unchanged. An edit changes more than its date."""
    text = data[span.start : span.end]
    written = text if decoded.codec == "utf-8" else decoded.encode(text.decode("utf-8"), mark=False)
    return sha(DATES.sub(rb"\1", text)), sha(written)


def _read_alone(entry: bytes, kind: str) -> Any:
    import feedparser

    before, after = WRAPPERS[kind]
    parsed = feedparser.parse(io.BytesIO(before + entry + after), response_headers={"content-type": UTF8_XML})
    return parsed.entries[0] if parsed.entries else {}


def _diff_whole(result: FeedDiff, body: bytes, entries: Sequence[Any], known: dict[str, str] | None) -> FeedDiff:
    """Entries feedparser sees but no span was found for: keyed all the same, so an unchanged feed
    still sends nothing, and the document goes out whole when one of them is new or changed."""
    keys = entry_keys([_identity(entry, None) for entry in entries])
    contents = []
    for entry in entries:
        undated = {k: v for k, v in entry.items() if k not in FEEDPARSER_DATES}
        contents.append((sha(json.dumps(undated, sort_keys=True, default=str)), ""))
    if any(_remember(result, keys, contents, known)):
        result.body = body
    return result


def _looks_like_json(body: bytes) -> bool:
    # Past any byte-order mark (and the zero bytes of UTF-16/32), a JSON Feed opens its object.
    return body.lstrip(b" \t\r\n\x00\xef\xbb\xbf\xfe\xff")[:1] == b"{"


def _sup_link(parsed: Any) -> str | None:
    for link in parsed.get("feed", {}).get("links", []) or []:
        if str(link.get("rel", "")).endswith(SUP_REL_SUFFIX) and link.get("href"):
            return str(link["href"])
    return None


def _cut(data: bytes, spans: list[Span], keep: list[bool], kind: str) -> bytes:
    out = bytearray()
    pos = 0
    dropped_about = []
    for span, k in zip(spans, keep, strict=True):
        if k:
            continue
        # Take the whitespace before a dropped element with it, so the output stays tidy.
        cut_from = span.start
        while cut_from > pos and data[cut_from - 1 : cut_from] in (b" ", b"\t", b"\n", b"\r"):
            cut_from -= 1
        out += data[pos:cut_from]
        pos = span.end
        if span.about:
            dropped_about.append(span.about)
    out += data[pos:]
    doc = bytes(out)
    # A repeated item's rdf:li is its first occurrence's too: that one stays while the item does.
    kept_about = {span.about for span, k in zip(spans, keep, strict=True) if k}
    dropped_about = [about for about in dict.fromkeys(dropped_about) if about not in kept_about]
    if kind == "rdf" and dropped_about:
        doc = _drop_rdf_li(doc, dropped_about)
    return doc


def _drop_rdf_li(doc: bytes, abouts: list[str]) -> bytes:
    """RSS 1.0 lists its items again in channel/items/rdf:Seq; drop the ``rdf:li`` of cut items."""
    for about in abouts:
        for quoted in (about.encode(), about.replace("&", "&amp;").encode()):
            doc = re.sub(rb"\s*<[\w.-]*:?li\s+[\w.-]*:?resource=[\"']" + re.escape(quoted) + rb"[\"']\s*/>", b"", doc)
    return doc


def _diff_json(feed: feeds_json.JsonFeed, known: dict[str, str] | None, sup: str | None = None) -> FeedDiff:
    identities = []
    for item in feed.items:
        if isinstance(item, dict):
            ident = item.get("id")
            stable = [item.get(k) or "" for k in ("title", "summary", "content_html", "content_text")]
            identities.append(
                (
                    "" if ident is None else str(ident).strip(),
                    str(item.get("url") or ""),
                    sha(feeds_json.canonical(stable)),
                )
            )
        else:
            identities.append(("", "", sha(feeds_json.canonical(item))))
    result = FeedDiff("json", None, sup=sup, encoding=feed.codec)
    contents = []
    for item in feed.items:
        undated = {k: v for k, v in item.items() if k not in JSON_DATES} if isinstance(item, dict) else item
        contents.append((sha(feeds_json.canonical(undated)), sha(feeds_json.canonical(item))))
    keep = _remember(result, entry_keys(identities), contents, known)
    if any(keep):
        result.body = feed.cut(keep)
    return result
