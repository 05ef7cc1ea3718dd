"""What a subscriber's callback receives: one content distribution (W3C WebSub section 7)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import httpx

FEED_TYPES = ("atom", "rss", "xml", "rdf")


@dataclass(frozen=True)
class Update:
    """One delivery. ``body`` is the bytes the publisher sent (or the hub's feed diff)."""

    topic: str
    body: bytes
    content_type: str
    headers: httpx.Headers = field(repr=False)

    @property
    def id(self) -> str | None:
        """The delivery id (Standard Webhooks ``webhook-id``), stable across retries."""
        value: str | None = self.headers.get("webhook-id")
        return value

    @property
    def seq(self) -> int | None:
        """The hub's ``X-Hub-Sequence`` for this subscription (1, 2, 3...), or None without one."""
        value = self.headers.get("x-hub-sequence", "").strip()
        return int(value) if value.isdigit() else None

    @property
    def text(self) -> str:
        encoding = "utf-8"
        for part in self.content_type.split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                encoding = value.strip('"')
        return self.body.decode(encoding, errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def is_feed(self) -> bool:
        media = self.content_type.split(";")[0].strip().lower()
        return any(kind in media for kind in FEED_TYPES)

    @cached_property
    def entries(self) -> list[Any]:
        """Entries of an Atom/RSS body, parsed with feedparser (``title``, ``link``, ``id``, ...); [] otherwise."""
        if not self.is_feed:
            return []
        import feedparser  # only when someone reads entries: it is slow to import

        return list(feedparser.parse(self.body).entries)
