"""SUP, the Simple Update Protocol (FriendFeed, 2008).

A feed advertises a SUP-ID, either as an ``X-SUP-ID: <SUP document URL>#<id>`` header or as a
``<link rel="http://api.friendfeed.com/2008/08/24#sup" href="<SUP document URL>#<id>">`` (any rel
ending in ``#sup`` is accepted: FriendFeed's own feeds used ``.../2008/03#sup``). The SUP document is
JSON: ``{"period": 60, "since_time": ..., "updated_time": ..., "updates": [[sup_id, update_id], ...]}``,
the SUP-IDs updated within the period, ``update_id`` playing the part of an ETag. One poll of it
replaces polling every feed it covers; the hub then fetches only the feeds listed as updated.

The hub polls a SUP document every half ``period`` (:func:`poll_wait`), so that consecutive
windows overlap; when one does not reach back to the last (``since_time`` after the last
``updated_time``: a poll came late, or the document's period is shorter than the hub may poll), every
feed it covers is fetched, since an update in the gap is listed nowhere.

The hub also serves its own SUP document (``GET /sup``) for its topics: a topic's SUP-ID is
:func:`sup_id` of its URL (the first ten hex digits of its SHA-1) and its update id the number of
times the hub distributed it. Deliveries advertise it as ``X-SUP-ID: <hub>/sup#<SUP-ID>``
(:func:`header`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
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
    # The window the updates cover (UNIX seconds), when the document says: ``since_time`` and
    # ``updated_time`` (FriendFeed's own documents spelled it ``update_time``).
    since_time: float | None = None
    updated_time: float | None = None

    def window(self, fetched_at: float) -> tuple[float, float]:
        """``(since, until)``: what the document covers. A document without times is taken as
        covering the ``period`` before it was fetched."""
        until = self.updated_time if self.updated_time is not None else fetched_at
        since = self.since_time if self.since_time is not None else until - self.period
        return since, until


def parse(body: bytes) -> SupDocument:
    """Parse a SUP document; ValueError if it is not one."""
    doc = json.loads(body)
    if not isinstance(doc, dict) or not isinstance(doc.get("updates"), list):
        raise ValueError("not a SUP document: no updates list")
    period = doc.get("period", DEFAULT_PERIOD)
    if not isinstance(period, int | float) or isinstance(period, bool) or not 0 < period < float("inf"):
        period = DEFAULT_PERIOD
    updates: dict[str, str] = {}
    for item in doc["updates"]:
        if isinstance(item, list) and len(item) >= 2:
            updates[str(item[0])] = str(item[1])
    updated = _time(doc.get("updated_time", doc.get("update_time")))
    return SupDocument(float(period), updates, _time(doc.get("since_time")), updated)


def _time(value: Any) -> float | None:
    """An ISO 8601 time (``2008-08-29T17:37:57Z``) as UNIX seconds; None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        t = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


# The SUP times have a resolution of a second: windows that miss each other by less still meet.
RESOLUTION = 1.0


def poll_wait(period: float, floor: float) -> float:
    """Seconds until the next poll of a SUP document of ``period``: half of it, so that each
    window overlaps the one before by half. An update listed just after a poll (a document
    generated a moment before it, a poll late by its own fetch) is then in the next one too."""
    return max(period / 2, floor)


def gap(previous_until: float | None, since: float) -> bool:
    """Whether a document covering from ``since`` leaves a gap after the one before it (which
    covered until ``previous_until``): updates in that gap are listed in neither."""
    return previous_until is not None and since > previous_until + RESOLUTION


def sup_id(topic: str) -> str:
    """The SUP-ID the hub gives a topic in its own SUP document: the first ten hex digits of the
    SHA-1 of its URL (as FriendFeed's public SUP feed did, with MD5)."""
    return hashlib.sha1(topic.encode()).hexdigest()[:10]


def header(document_url: str, topic: str) -> str:
    """The ``X-SUP-ID`` value that advertises ``topic`` in the SUP document at ``document_url``."""
    return f"{document_url}#{sup_id(topic)}"


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
