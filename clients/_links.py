"""RFC 8288 ``Link`` headers: several header lines or one comma-joined line, quoted or bare ``rel``.

ReverseHttp (``first``, ``next``, ``related``) and WebSub (``hub``, ``self``) both find their URLs
here, so the parser must not assume one header per relation as the 2008 reference client did.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urljoin

_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,=\s]+(?:\s*=\s*(?:\"(?:[^\"\\]|\\.)*\"|[^;,\s]*))?)*)")
_PARAM = re.compile(r";\s*([^;,=\s]+)(?:\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|([^;,\s]*)))?")


def parse_links(values: Iterable[str], base: str = "") -> list[tuple[str, set[str]]]:
    """Every link as ``(absolute URL, {rel, ...})``, in header order."""
    links: list[tuple[str, set[str]]] = []
    for value in values:
        for match in _LINK.finditer(value):
            rels: set[str] = set()
            for param in _PARAM.finditer(match.group(2)):
                if param.group(1).lower() == "rel":
                    raw = param.group(2) if param.group(2) is not None else (param.group(3) or "")
                    rels.update(r.lower() for r in raw.split())
            links.append((urljoin(base, match.group(1).strip()), rels))
    return links


def find_link(values: Iterable[str], rel: str, base: str = "") -> str | None:
    """The first URL with relation ``rel``, or None."""
    for url, rels in parse_links(values, base):
        if rel in rels:
            return url
    return None
