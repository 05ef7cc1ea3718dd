"""SUP, the Simple Update Protocol (FriendFeed, 2008).

A feed advertises a SUP-ID, either as an ``X-SUP-ID: <SUP document URL>#<id>`` header or as a
``<link rel="http://api.friendfeed.com/2008/08/24#sup" href="<SUP document URL>#<id>">`` (any rel
ending in ``#sup`` is accepted: FriendFeed's own feeds used ``.../2008/03#sup``). The SUP document is
JSON: ``{"period": 60, "since_time": ..., "updated_time": ..., "updates": [[sup_id, update_id], ...]}``,
the SUP-IDs updated within the period, ``update_id`` playing the part of an ETag. One poll of it
replaces polling every feed it covers; the hub then fetches only the feeds listed as updated.

The hub also serves its own SUP document (``GET /sup``) for its topics: a topic's SUP-ID is a short
hash of its URL and its update id the number of times the hub distributed it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any

DEFAULT_PERIOD = 60.0


@dataclass(frozen=True)
class SupLink:
    url: str  # the SUP document
    sup_id: str


def split(href: str) -> SupLink | None:
    url, sep, sup_id = href.strip().partition("#")
    if not sep or not url or not sup_id:
        return None
    return SupLink(url, sup_id)


def from_headers(headers: Any) -> SupLink | None:
    value = headers.get("x-sup-id")
    return split(value) if value else None


@dataclass(frozen=True)
class SupDocument:
    period: float
    updates: dict[str, str]  # sup_id -> update_id


def parse(body: bytes) -> SupDocument:
    """Parse a SUP document; ValueError if it is not one."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("updates"), list):
        raise ValueError("not a SUP document: no updates list")
    period = doc.get("period", DEFAULT_PERIOD)
    if not isinstance(period, int | float) or period <= 0:
        period = DEFAULT_PERIOD
    updates: dict[str, str] = {}
    for item in doc["updates"]:
        if isinstance(item, list) and len(item) >= 2:
            updates[str(item[0])] = str(item[1])
    return SupDocument(float(period), updates)


def sup_id(topic: str) -> str:
    return hashlib.sha1(topic.encode()).hexdigest()[:10]


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def document(updates: list[tuple[str, int]], now: float, period: float, available: dict[int, str]) -> bytes:
    """Our SUP document for topics (url, version) updated within ``period`` seconds of ``now``."""
    return json.dumps(
        {
            "period": int(period),
            "available_periods": {str(k): v for k, v in available.items()},
            "since_time": _iso(now - period),
            "updated_time": _iso(now),
            "updates": [[sup_id(url), str(version)] for url, version in updates],
        }
    ).encode()
