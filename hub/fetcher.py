"""Fetching topics: publish pings, adaptive polling of topics nobody pings, and SUP.

A ping (``hub.url``) is a row (``hub_topics.ping_at``) written before the publisher's 204; this
fetcher takes it from there. Topics with subscribers are also polled with conditional GETs
(ETag / Last-Modified) at an interval that halves when the topic changed and doubles when it did
not, within ``poll_min_interval`` and ``poll_max_interval``. A topic its publisher pings, or that a
SUP document covers (:mod:`hub.sup_sources`), is polled only at the maximum interval, as a safety
net. A fetch that fails is tried again after an exponential backoff, up to the maximum.

What went out is one record per topic, whoever sent it: the entries (key and content hash) of
every fetched feed and fat-pinged feed body, and the last body. A fetch sends what that record
lacks. A topic's first successful fetch, and the one a subscribe makes of a topic nobody listened
to, only record a baseline: subscribers must not get the back catalogue when they subscribe.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urljoin

import anyio
import httpx
from cachetools import TTLCache
from sqlalchemy import exists, or_, select, update
from sqlalchemy.engine import CursorResult

from hub import feeds, store, sup
from hub.errors import FetchFailed, URLRefused
from hub.metrics import HubMetrics
from hub.models import Subscription, Topic
from hub.netguard import NetGuard
from hub.sup_sources import SupSources
from reversehub.core.backoff import backoff
from reversehub.core.outbound import OutboundError
from reversehub.core.services import Services

logger = logging.getLogger(__name__)

ACCEPT = (
    "application/atom+xml, application/rss+xml, application/rdf+xml, application/feed+json, "
    "application/json;q=0.9, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.8"
)
MAX_REDIRECTS = 5
BATCH = 32
BASELINE_RETRY = 60.0
# Subscribers of one topic within this many seconds share its subscribe-time fetch.
BASELINE_FRESH = 10.0
# A topic pinged within this long is polled only as a safety net (poll_max_interval).
PINGED_LATELY = 7 * 24 * 3600.0


@dataclass(frozen=True)
class Fetched:
    status: int  # 200 or 304
    headers: httpx.Headers
    body: bytes


class Fetcher:
    def __init__(self, services: Services, guard: NetGuard, metrics: HubMetrics, on_enqueued: object) -> None:
        self.services = services
        self.settings = services.settings
        self.guard = guard
        self.metrics = metrics
        self._on_enqueued = on_enqueued
        self._wake = anyio.Event()
        self.sup_sources = SupSources(services, self.fetch, self.wake)
        self._limit = anyio.Semaphore(16)
        self._closing = False
        self._baselines: dict[str, anyio.Lock] = {}
        # Topics whose baseline fetch failed within BASELINE_RETRY: bounded, since anyone may subscribe.
        self._baseline_failed: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=BASELINE_RETRY, timer=time.monotonic)
        # Topics fetched for a subscriber within BASELINE_FRESH: those arriving meanwhile share it.
        self._fresh: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=BASELINE_FRESH, timer=time.monotonic)

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while not self._closing:
                self._wake = anyio.Event()
                try:
                    topics = await self._claim_topics()
                    for topic in topics:
                        tg.start_soon(self._process_bounded, topic)
                    sources = await self.sup_sources.claim()
                    for source in sources:
                        tg.start_soon(self.sup_sources.poll, source)
                except Exception:
                    logger.exception("fetcher pass failed")
                    topics = []
                if topics:
                    continue
                with anyio.move_on_after(self._next_wait()):
                    await self._wake.wait()
            tg.cancel_scope.cancel()

    def _next_wait(self) -> float:
        return min(self.settings.outbox_scan_interval, self.settings.poll_min_interval)

    # -- fetching ------------------------------------------------------------------------------

    async def fetch(self, url: str, etag: str | None = None, last_modified: str | None = None) -> Fetched:
        """GET ``url`` conditionally, following redirects: each hop is checked by the SSRF guard, and
        its connection goes only to an address judged when the host was resolved for it
        (:mod:`reversehub.core.egress`), so no hop reaches a private network however its name answers."""
        headers = {"Accept": ACCEPT, "User-Agent": "reversehub (WebSub hub)"}
        if etag:
            headers["If-None-Match"] = etag
        if last_modified:
            headers["If-Modified-Since"] = last_modified
        for _ in range(MAX_REDIRECTS + 1):
            try:
                await self.guard.check(url)
            except URLRefused as exc:
                raise FetchFailed(str(exc)) from exc
            try:
                # One byte past the limit tells a topic that is too large from one that just fits.
                r = await self.services.outbound.request(
                    "GET",
                    url,
                    headers=headers,
                    timeout=self.settings.fetch_timeout,
                    limit=self.settings.max_topic_size + 1,
                )
            except OutboundError as exc:
                raise FetchFailed(f"fetch failed: {exc}") from exc
            if r.is_redirect:
                url = urljoin(url, r.headers["location"])
                continue
            if r.status == 304:
                return Fetched(304, r.headers, b"")
            if not 200 <= r.status < 300:
                raise FetchFailed(f"topic answered {r.status}")
            if len(r.body) > self.settings.max_topic_size:
                raise FetchFailed("topic larger than max_topic_size")
            return Fetched(r.status, r.headers, r.body)
        raise FetchFailed("too many redirects")

    async def _claim_topics(self) -> list[Topic]:
        now = time.time()
        subscribed = exists().where(Subscription.topic == Topic.url, Subscription.state == store.ACTIVE)
        due = (
            select(Topic)
            .where(
                or_(Topic.fetch_claimed_until.is_(None), Topic.fetch_claimed_until < now),
                or_(Topic.ping_at.is_not(None), Topic.next_poll_at <= now),
            )
            .order_by(Topic.ping_at.is_(None), Topic.next_poll_at)
            .limit(BATCH)
        )
        # Reading first keeps the common case (nothing due) free of write transactions.
        async with self.services.sessions() as s:
            if not (await s.execute(due.with_only_columns(Topic.id))).first():
                return []
        async with store.writing(self.services.sessions) as s:
            # Pings for topics nobody subscribes to need no fetch.
            await s.execute(update(Topic).where(Topic.ping_at.is_not(None), ~subscribed).values(ping_at=None))
            q = due.where(subscribed)
            if store.dialect(s) == "postgresql":
                q = q.with_for_update(skip_locked=True)
            topics = list((await s.execute(q)).scalars())
            if topics:
                await s.execute(
                    update(Topic)
                    .where(Topic.id.in_([t.id for t in topics]))
                    .values(fetch_claimed_until=now + 3 * self.settings.fetch_timeout)
                )
        return topics

    async def _process_bounded(self, topic: Topic) -> None:
        async with self._limit:
            try:
                await self.process(topic)
            except Exception:
                logger.exception("processing a topic failed")

    async def baseline(self, url: str) -> None:
        """Fetch a topic before a subscriber is told it is subscribed: its baseline.

        Called between a subscribe request and its verification GET. The new subscriber's first
        delivery then holds only entries that appear after this fetch (its activation takes the
        payloads stored since the verification went out): a publisher that adds an entry and pings
        once the subscriber is subscribed finds the entry new, and nothing older reaches it.

        A new topic, or one nobody listened to for a while (what the hub remembers of it is old:
        entries added meanwhile must not reach the new subscriber), is fetched as a baseline: its
        entries are recorded, nothing is sent. A topic with active subscribers is fetched as a
        ping would fetch it: what is new goes to them, not yet to the newcomer; if the fetcher has
        it claimed, that fetch does the same. Subscribers of one topic arriving together share one
        fetch (one every BASELINE_FRESH seconds), so that a thousand of them are not verified one
        by one, and a topic whose fetch failed a moment ago costs none (its next successful fetch
        is then the baseline)."""
        if self._failed_lately(url) or self._shared(url):
            return
        listened = await self._listened(url)
        lock = self._baselines.setdefault(url, anyio.Lock())
        try:
            async with lock:
                if self._failed_lately(url) or self._shared(url):
                    return
                started = time.time()
                async with store.writing(self.services.sessions) as s:
                    await store.ensure_topic(s, url, started)
                async with self.services.sessions() as s:
                    topic = (await s.execute(select(Topic).where(Topic.url == url))).scalar_one()
                if listened and not await self._claim(topic.id, started):
                    return
                await self.process(topic, baseline=not listened)
                async with self.services.sessions() as s:
                    fetched_at = (await s.execute(select(Topic.fetched_at).where(Topic.url == url))).scalar_one()
                if fetched_at is not None and fetched_at >= started:
                    self._fresh[url] = True
                else:
                    self._baseline_failed[url] = True
        finally:
            if not lock.locked() and lock.statistics().tasks_waiting == 0:
                self._baselines.pop(url, None)

    async def _claim(self, topic_id: int, now: float) -> bool:
        """Claim one topic for a fetch, as :meth:`_claim_topics` does; False if another fetch has it."""
        async with store.writing(self.services.sessions) as s:
            result = await s.execute(
                update(Topic)
                .where(
                    Topic.id == topic_id,
                    or_(Topic.fetch_claimed_until.is_(None), Topic.fetch_claimed_until < now),
                )
                .values(fetch_claimed_until=now + 3 * self.settings.fetch_timeout)
            )
        return bool(cast("CursorResult[Any]", result).rowcount)

    def _shared(self, url: str) -> bool:
        """Whether ``url`` was fetched for a subscriber in the last BASELINE_FRESH seconds:
        subscribers that come together share that fetch, however long their verifications take."""
        return url in self._fresh

    def _failed_lately(self, url: str) -> bool:
        """An unreachable topic must not hold up every subscription to it (nor cost each one a read)."""
        return url in self._baseline_failed

    async def _listened(self, url: str) -> bool:
        """Whether the topic has a baseline and active subscribers (so the fetcher keeps it current)."""
        _, current = await store.outlook(self.services.sessions, url)
        return current

    async def process(self, topic: Topic, *, baseline: bool = False) -> int:
        """Fetch one topic and distribute what is new; returns the number of deliveries queued.

        ``baseline``: only record what is there (entries, validators), distribute nothing. So does
        any fetch of a topic without a baseline (``fetched_at`` None: its subscribe-time fetch
        failed): the feed's entries at its first successful answer are what its subscribers had.

        A fetch that fails (an error, a 4xx/5xx, a body that cannot be read) is tried again after
        an exponential backoff up to ``poll_max_interval``; a success resets it. Whatever the
        failure, the topic's claim is settled here, so no topic is fetched again at the claim's
        expiry forever."""
        started = time.time()
        try:
            return await self._process(topic, started, baseline)
        except Exception as exc:
            if isinstance(exc, FetchFailed):
                logger.info("topic fetch failed: %s", exc)
            else:
                logger.warning("processing a fetched topic failed", exc_info=True)
            self.metrics.fetches.labels("error").inc()
            await self._failed(topic, started, baseline)
            return 0

    async def entries_of(self, content_type: str, body: bytes) -> dict[str, str]:
        """The entries of a fat ping's body as a fetch would remember them (key hash -> content
        hash); empty for a body that is not a feed. They are remembered with the fat ping, so that
        a later fetch of the topic sends none of them again."""
        if not feeds.is_feed_type(content_type):
            return {}
        try:
            diff = await anyio.to_thread.run_sync(feeds.diff, body, content_type, None)
        except Exception:  # the publisher's body goes out as it is all the same
            logger.info("a fat ping's feed could not be read for its entries", exc_info=True)
            return {}
        return diff.entries

    async def _process(self, topic: Topic, started: float, baseline: bool) -> int:
        fetched = await self.fetch(topic.url, topic.etag, topic.last_modified)
        # It answers again: its next new subscriber's baseline is worth taking.
        self._baseline_failed.pop(topic.url, None)
        if fetched.status == 304:
            self.metrics.fetches.labels("unchanged").inc()
            await self._finish(topic, started, changed=False, values={"fetched_at": started})
            return 0
        content_type = fetched.headers.get("content-type", "application/octet-stream")
        body_hash = feeds.sha(fetched.body)
        values: dict[str, object] = {
            "etag": fetched.headers.get("etag"),
            "last_modified": fetched.headers.get("last-modified"),
            "content_type": content_type[:255],
            "body_hash": body_hash,
            "fetched_at": started,
        }
        link = sup.from_headers(fetched.headers)
        # What went out before, by fetches and fat pings alike: one model, whatever sent it.
        async with self.services.sessions() as s:
            known = await store.known_entries(s, topic.id)
        diff = None
        if feeds.is_feed_type(content_type):
            diff = await anyio.to_thread.run_sync(feeds.diff, fetched.body, content_type, known)
            if link is None and diff.sup:
                link = sup.split(diff.sup)
        baseline = baseline or topic.fetched_at is None
        out: bytes | None
        if diff is not None and diff.kind is not None:
            out = diff.body
        else:
            out = fetched.body if body_hash != topic.body_hash else None
        if baseline:
            out = None
        if link is not None:
            values.update(sup_url=link.url[:2048], sup_id=link.sup_id[:255])
        queued = 0
        async with store.writing(self.services.sessions) as s:
            if diff is not None and diff.entries:
                await store.remember_entries(s, topic.id, diff.entries, known)
            if out is not None:
                queued = (
                    await store.enqueue(
                        s, topic.url, content_type, out, time.time(), self.settings.max_pending_per_subscription
                    )
                ).deliveries
            if link is not None:
                await self.sup_sources.ensure(s, link.url)
        self.metrics.fetches.labels("changed" if out is not None else "unchanged").inc()
        await self._finish(topic, started, changed=out is not None or baseline, values=values, covered=link is not None)
        if queued:
            self._on_enqueued()  # type: ignore[operator]
        return queued

    def _safety_net(self, topic: Topic, started: float, covered: bool) -> bool:
        """Whether the topic is polled only at ``poll_max_interval``: its publisher pings it (lately)
        or a SUP document covers it, so a poll is there only for a ping or an update that was lost."""
        pinged_at = topic.pinged_at
        if topic.ping_at is not None:
            pinged_at = max(pinged_at or 0.0, topic.ping_at)
        pinged = pinged_at is not None and started - pinged_at < PINGED_LATELY
        return pinged or covered or topic.sup_url is not None

    async def _finish(
        self, topic: Topic, started: float, *, changed: bool, values: dict[str, object], covered: bool = False
    ) -> None:
        s = self.settings
        interval = topic.poll_interval or s.poll_min_interval
        interval = interval / 2 if changed else interval * 2
        interval = max(s.poll_min_interval, min(s.poll_max_interval, interval))
        next_poll = started + (s.poll_max_interval if self._safety_net(topic, started, covered) else interval)
        await self._settle(topic, started, {"poll_interval": interval, "next_poll_at": next_poll, **values})

    async def _failed(self, topic: Topic, started: float, baseline: bool) -> None:
        failures = topic.fetch_failures + 1
        wait = backoff(failures, self.settings.poll_min_interval, self.settings.poll_max_interval)
        values: dict[str, object] = {"fetch_failures": failures, "next_poll_at": started + wait}
        if baseline:
            # A baseline that could not be taken: what the hub remembers of the topic may be old
            # (nobody listened for a while), so the next successful fetch is the baseline.
            values["fetched_at"] = None
        await self._settle(topic, started, values)

    async def _settle(self, topic: Topic, started: float, values: dict[str, object]) -> None:
        values.setdefault("fetch_failures", 0)
        async with store.writing(self.services.sessions) as session:
            await session.execute(update(Topic).where(Topic.id == topic.id).values(fetch_claimed_until=None, **values))
            # A ping that came in while we fetched stays, so that change is fetched too.
            await session.execute(
                update(Topic).where(Topic.id == topic.id, Topic.ping_at <= started).values(ping_at=None)
            )
