"""The SUP documents the hub polls for the feeds that advertise one (:mod:`hub.sup`).

Each is a row (:class:`~hub.models.SupSource`), polled every half of the period it declares so that
consecutive windows overlap; a poll marks the feeds it lists as updated (a ping, ``ping_at``),
or, when its window does not reach back to the last one's, every feed it covers. The fetcher
(:mod:`hub.fetcher`) then fetches them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from sqlalchemy import select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession

from hub import store, sup
from hub.errors import FetchFailed
from hub.models import SupSource, Topic
from reversehub.core.services import Services

logger = logging.getLogger(__name__)

BATCH = 32
# The shortest wait between two polls of one SUP document (or poll_min_interval, if shorter).
SUP_MIN_WAIT = 1.0


class SupSources:
    """``fetch`` is the fetcher's conditional GET (its SSRF guard included), ``wake`` wakes it."""

    def __init__(self, services: Services, fetch: Callable[..., Awaitable[Any]], wake: Callable[[], None]) -> None:
        self.services = services
        self.settings = services.settings
        self._fetch = fetch
        self._wake = wake

    async def ensure(self, s: AsyncSession, url: str) -> None:
        """Poll the SUP document at ``url`` from now on (a feed advertised it), in ``s``'s transaction."""
        await store.ensure_sup_source(s, url, sup.DEFAULT_PERIOD, time.time())

    async def claim(self) -> list[SupSource]:
        """The SUP documents due for a poll, claimed for this process."""
        now = time.time()
        due = select(SupSource).where(SupSource.next_poll_at <= now).limit(BATCH)
        async with self.services.sessions() as s:
            if not (await s.execute(due.with_only_columns(SupSource.id))).first():
                return []
        async with store.writing(self.services.sessions) as s:
            sources = list((await s.execute(due)).scalars())
            if sources:
                # Claimed by pushing the next poll out; the poll itself sets the real next time.
                await s.execute(
                    update(SupSource)
                    .where(SupSource.id.in_([x.id for x in sources]))
                    .values(next_poll_at=now + 3 * self.settings.fetch_timeout)
                )
        return sources

    async def poll(self, source: SupSource) -> None:
        s = self.settings
        period = source.period
        values: dict[str, object] = {}
        started = time.time()
        try:
            fetched = await self._fetch(source.url, source.etag, source.last_modified)
            if fetched.status == 200:
                doc = sup.parse(fetched.body)
                period = doc.period
                since, until = doc.window(started)
                values = {
                    "etag": fetched.headers.get("etag"),
                    "last_modified": fetched.headers.get("last-modified"),
                    "updated_time": until,
                }
                await self._apply(source.url, doc, every_feed=sup.gap(source.updated_time, since))
        except (FetchFailed, ValueError) as exc:
            logger.info("SUP poll failed: %s", exc)
        except Exception:
            logger.exception("SUP poll failed")
        wait = min(s.poll_max_interval, sup.poll_wait(period, min(SUP_MIN_WAIT, s.poll_min_interval)))
        async with store.writing(self.services.sessions) as session:
            await session.execute(
                update(SupSource)
                .where(SupSource.id == source.id)
                .values(period=period, next_poll_at=time.time() + wait, **values)
            )

    async def _apply(self, url: str, doc: sup.SupDocument, *, every_feed: bool = False) -> None:
        """Fetch the feeds ``doc`` lists with an update id not seen before; with ``every_feed``
        (the document does not reach back to the last one), every feed the document covers."""
        if not doc.updates and not every_feed:
            return
        now = time.time()
        woke = False
        async with store.writing(self.services.sessions) as s:
            if every_feed:
                result = await s.execute(update(Topic).where(Topic.sup_url == url).values(ping_at=now))
                woke = bool(cast("CursorResult[Any]", result).rowcount)
            rows = (
                await s.execute(
                    select(Topic.id, Topic.sup_id, Topic.sup_seen).where(
                        Topic.sup_url == url, Topic.sup_id.in_(list(doc.updates))
                    )
                )
            ).all()
            for topic_id, sup_id, seen in rows:
                if sup_id is None:
                    continue
                update_id = doc.updates[sup_id]
                if seen != update_id:
                    await s.execute(
                        update(Topic).where(Topic.id == topic_id).values(ping_at=now, sup_seen=update_id[:255])
                    )
                    woke = True
        if woke:
            self._wake()
