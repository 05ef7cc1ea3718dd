"""Where each entry of a feed document starts and ends, as byte offsets into its UTF-8 text.

A well-formed document is read by expat (the parser of the standard library; expat >= 2.4 refuses
entity expansion bombs and resolves no external entities), which knows namespaces, CDATA and
comments exactly. A document expat refuses (an undefined ``&nbsp;``, an unclosed ``<br>``, a stray
``&``) is what feedparser reads with its loose parser and flags ``bozo``; for those the spans come
from :func:`loose_spans`, a tag scanner that closes entries the way that loose parser does: an
entry ends at its end tag, at the next entry's start tag, or at the end of its feed or channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATOM = "http://www.w3.org/2005/Atom"
ATOM03 = "http://purl.org/atom/ns#"
RSS1 = "http://purl.org/rss/1.0/"
RSS090 = "http://my.netscape.com/rdf/simple/0.9/"
RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"

ENTRY = {"atom": "entry", "rss": "item", "rdf": "item"}
# Where an entry sits: an Atom entry and an RSS 1.0 item are children of the root; an RSS 0.9x/2.0
# item is a child of <channel> (or, in feeds feedparser accepts anyway, of <rss>).
DEPTHS = {"atom": (2,), "rss": (2, 3), "rdf": (2,)}
# Entries are in the root's namespace (Atom 1.0 or 0.3; RSS 2.0 under Userland's
# xmlns="http://backend.userland.com/rss2"), in none (RSS 0.9x/2.0), or RSS 1.0's/0.9's.
ENTRY_NAMESPACES = ("", ATOM, ATOM03, RSS1, RSS090)
CONTAINERS = (b"feed", b"channel", b"rss", b"rdf")
SPACE = b" \t\r\n"

# Each alternative either matches or gives up at the next "<", so a hostile document costs linear
# time: no construct is retried to the end of the document from every "<" in it. ("<" cannot occur
# in an attribute value, XML 1.0 production AttValue.)
TOKEN = re.compile(
    rb"<!--.*?(?:-->|\Z)"
    rb"|<!\[CDATA\[.*?(?:\]\]>|\Z)"
    rb"|<\?.*?(?:\?>|\Z)"
    rb"|<!DOCTYPE[^\[<>]*(?:\[.*?(?:\]\s*>|\Z)|>)"
    rb"|<(/?)([A-Za-z_][\w.:-]*)((?:\"[^\"<]*\"|'[^'<]*'|[^'\"<>])*)>",
    re.S | re.I,
)
ABOUT = re.compile(rb"""(?:^|\s)(?:[\w.-]+:)?about\s*=\s*(?:"([^"]*)"|'([^']*)')""")


@dataclass(frozen=True)
class Span:
    """An entry at ``data[start:end]``; ``about`` is an RSS 1.0 item's ``rdf:about``."""

    start: int
    end: int
    about: str | None = None


def strict_spans(data: bytes, kind: str) -> list[Span] | None:
    """Entry spans of a well-formed UTF-8 document; None when expat refuses it."""
    from xml.parsers import expat

    # The encoding given here overrides the declaration, which still names the publisher's.
    parser = expat.ParserCreate(encoding="UTF-8", namespace_separator=" ")
    spans: list[Span] = []
    depth = 0
    root_ns = ""
    open_at: tuple[int, int, str | None] | None = None  # (depth, start, about)
    local_name, depths = ENTRY[kind], DEPTHS[kind]

    def start(name: str, attrs: dict[str, str]) -> None:
        nonlocal depth, open_at, root_ns
        depth += 1
        ns, _, local = name.rpartition(" ")
        if depth == 1:
            root_ns = ns
        if open_at is None and depth in depths and local == local_name and (ns == root_ns or ns in ENTRY_NAMESPACES):
            open_at = (depth, parser.CurrentByteIndex, attrs.get(RDF + " about"))

    def end(name: str) -> None:
        nonlocal depth, open_at
        if open_at is not None and open_at[0] == depth:
            at = parser.CurrentByteIndex
            # At an end tag the index points at "</"; for an empty element <item/> it points at
            # the start tag itself. Either way the element ends at the next ">".
            stop = data.index(b">", max(at, open_at[1])) + 1
            spans.append(Span(open_at[1], stop, open_at[2]))
            open_at = None
        depth -= 1

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    try:
        parser.Parse(data, True)
    except (expat.ExpatError, ValueError):
        return None
    return spans


def loose_spans(data: bytes, kind: str) -> list[Span]:
    """Entry spans of a document that is not well-formed, closing entries as feedparser's loose
    parser does (it starts a new entry at every entry start tag, however nested)."""
    entry = ENTRY[kind].encode()
    spans: list[Span] = []
    open_at: tuple[int, str | None] | None = None  # (start, about)

    def close(at: int) -> None:
        nonlocal open_at
        if open_at is not None:
            spans.append(Span(open_at[0], _trim(data, open_at[0], at), open_at[1]))
            open_at = None

    for token in TOKEN.finditer(data):
        name = token.group(2)
        if name is None:
            continue
        local = name.rpartition(b":")[2].lower()
        if token.group(1):
            if local == entry and open_at is not None:
                spans.append(Span(open_at[0], token.end(), open_at[1]))
                open_at = None
            elif local in CONTAINERS:
                close(token.start())
            continue
        if local != entry:
            continue
        close(token.start())
        attrs = token.group(3)
        found = ABOUT.search(attrs)
        about = (found.group(1) or found.group(2) or b"").decode("utf-8", "replace") if found else None
        if attrs.rstrip().endswith(b"/"):
            spans.append(Span(token.start(), token.end(), about))
        else:
            open_at = (token.start(), about)
    close(len(data))
    return spans


def _trim(data: bytes, start: int, end: int) -> int:
    """``end`` moved back over the whitespace before it (an entry closed by what follows it)."""
    while end > start and data[end - 1] in SPACE:
        end -= 1
    return end
