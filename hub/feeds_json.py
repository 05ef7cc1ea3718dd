"""JSON Feed (https://jsonfeed.org/version/1.1): items found by their offsets and cut out as written.

feedparser 6.0 does not know JSON Feed. Re-serialising a parsed document would change what the
publisher wrote: Python reads a valid ``1e400`` as infinity and writes ``Infinity``, which is not
JSON, and indentation, key order and number spellings would change. So the document is scanned for
the text of each element of its top-level ``items`` array, and the delivery is the publisher's text
with the other elements (and the separators before them) cut out.

RFC 8259 section 8.1: JSON exchanged between systems is UTF-8 and a byte-order mark "MUST NOT" be
added; a parser "MAY ignore" one. A mark on a fetched feed is therefore read past, and not sent on.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

VERSION_PREFIX = "https://jsonfeed.org/version/"
WS = " \t\r\n"


def _float(text: str) -> float | Decimal:
    # A number beyond a double (1e400) stays itself rather than becoming infinity.
    value = float(text)
    return value if math.isfinite(value) else Decimal(text)


def _int(text: str) -> int | Decimal:
    # Python refuses to convert integers of more than 4300 digits (CVE-2020-10735).
    return int(text) if len(text) <= 4000 else Decimal(text)


@dataclass(frozen=True)
class JsonFeed:
    """A JSON Feed as text: its ``items`` (parsed) at ``spans`` (offsets into ``text``)."""

    text: str
    codec: str
    mark: bytes
    items: list[Any]
    spans: list[tuple[int, int]]

    def cut(self, keep: list[bool]) -> bytes:
        """The document with only the items marked in ``keep``, every byte of it as written."""
        out = [self.text[: self.spans[0][0]]]
        first = True
        for i, ((start, end), k) in enumerate(zip(self.spans, keep, strict=True)):
            if k:
                if not first:
                    # The separator the publisher wrote before this item: its comma and indentation.
                    out.append(self.text[self.spans[i - 1][1] : start])
                out.append(self.text[start:end])
                first = False
        out.append(self.text[self.spans[-1][1] :])
        return self.mark + "".join(out).encode(self.codec)


def canonical(item: Any) -> str:
    """One spelling per value, so reformatting a feed changes no item's hash."""
    return json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)


def read(body: bytes) -> JsonFeed | None:
    """The JSON Feed in ``body``, or None when it is not one."""
    try:
        codec: str = json.detect_encoding(body)
        mark = b""
        if codec == "utf-8-sig":
            body, codec = body[3:], "utf-8"
        elif codec in ("utf-16", "utf-32"):
            # A mark json found; the delivery keeps it, for it is not UTF-8 (and not RFC 8259 JSON).
            size = 2 if codec == "utf-16" else 4
            mark, body = body[:size], body[size:]
            codec += "-le" if mark[:2] == b"\xff\xfe" else "-be"
        text = body.decode(codec)
        found = _scan(text)
    except (ValueError, IndexError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if found is None:
        return None
    version, items, spans = found
    if not str(version).startswith(VERSION_PREFIX):
        return None
    return JsonFeed(text, codec, mark, items, spans)


def _scan(text: str) -> tuple[Any, list[Any], list[tuple[int, int]]] | None:
    """The ``version`` and the ``items`` of a top-level object, each item with its span."""
    # A decoder per document: diffs run in worker threads, and a decoder keeps state while it reads.
    decoder = json.JSONDecoder(parse_float=_float, parse_int=_int)
    i = _skip(text, 0)
    if text[i : i + 1] != "{":
        return None
    version: Any = None
    items: list[Any] | None = None
    spans: list[tuple[int, int]] = []
    i = _skip(text, i + 1)
    if text[i] == "}":
        return None
    while True:
        key, i = decoder.raw_decode(text, i)
        i = _skip(text, i)
        if text[i] != ":":
            raise ValueError("expected ':'")
        i = _skip(text, i + 1)
        if key == "items" and text[i] == "[":
            # A repeated key counts as its last occurrence, as for json.loads.
            items, spans = [], []
            i = _skip(text, i + 1)
            while text[i] != "]":
                value, end = decoder.raw_decode(text, i)
                items.append(value)
                spans.append((i, end))
                i = _skip(text, end)
                if text[i] == ",":
                    i = _skip(text, i + 1)
                elif text[i] != "]":
                    raise ValueError("expected ',' or ']'")
            i += 1
        else:
            value, i = decoder.raw_decode(text, i)
            if key == "version":
                version = value
        i = _skip(text, i)
        if text[i] == ",":
            i = _skip(text, i + 1)
        elif text[i] == "}":
            break
        else:
            raise ValueError("expected ',' or '}'")
    if _skip(text, i + 1) != len(text) or items is None:
        return None
    return version, items, spans


def _skip(text: str, i: int) -> int:
    while i < len(text) and text[i] in WS:
        i += 1
    return i
