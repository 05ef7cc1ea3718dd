"""WebSub discovery (W3C WebSub section 4): which hub serves a topic, and its canonical URL.

The topic's response names them with ``Link: <hub>; rel="hub"`` and ``Link: <topic>; rel="self"``
headers, or, failing those, with ``<link rel="hub" href="…">`` elements in an HTML page, an Atom
feed (``<link>`` in the Atom namespace) or an RSS feed (``<atom:link>``). Headers win over the body,
as the spec asks subscribers to check them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import urljoin

import httpx

from clients._links import parse_links
from clients.errors import DiscoveryError, reason_of

# Enough of a page or feed to find its head; a hub link lives near the top.
MAX_DISCOVERY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class Discovered:
    hub: str
    topic: str  # the rel="self" URL, or the URL we fetched


class _LinkFinder(HTMLParser):
    """Collects ``<link rel href>`` from HTML, and from XML feeds whatever their namespace prefix."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[tuple[str, set[str]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag.rpartition(":")[2] != "link":
            return
        values = {k.lower(): v or "" for k, v in attrs}
        if "href" in values and "rel" in values:
            self.links.append((values["href"].strip(), {r.lower() for r in values["rel"].split()}))

    handle_startendtag = handle_starttag


def links_in_body(body: bytes, base: str) -> list[tuple[str, set[str]]]:
    finder = _LinkFinder()
    finder.feed(body[:MAX_DISCOVERY_BYTES].decode("utf-8", errors="replace"))
    finder.close()
    return [(urljoin(base, href), rels) for href, rels in finder.links]


def discover_from(response: httpx.Response) -> Discovered:
    """Find the hub and self URL in an already-fetched topic response."""
    base = str(response.url)
    header_links = parse_links(response.headers.get_list("link"), base)
    hub = _first(header_links, "hub")
    self_url = _first(header_links, "self")
    if hub is None:
        body_links = links_in_body(response.content, base)
        hub = _first(body_links, "hub")
        self_url = self_url or _first(body_links, "self")
    if hub is None:
        raise DiscoveryError(f'{base} names no hub (no Link rel="hub" header or <link rel="hub">)')
    return Discovered(hub=hub, topic=self_url or base)


async def discover(topic: str, http: httpx.AsyncClient) -> Discovered:
    """Fetch ``topic`` and find its hub; raises :class:`DiscoveryError` when it names none."""
    try:
        response = await http.get(topic, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise DiscoveryError(f"could not fetch {topic} to find its hub ({reason_of(exc)})") from exc
    if response.status_code >= 400:
        raise DiscoveryError(f"could not fetch {topic}: HTTP {response.status_code}")
    return discover_from(response)


def _first(links: list[tuple[str, set[str]]], rel: str) -> str | None:
    return next((url for url, rels in links if rel in rels), None)
