"""The delivery outbox: workers that send pending deliveries, retry failures, record outcomes.

Work is rows (:mod:`hub.store`): a publisher's 2xx comes after the payload and one delivery row per
subscriber are committed, so a killed process loses nothing. Each Outbox is a worker with an
identity and a heartbeat row (:mod:`hub.store.workers`); its claims hold while its heartbeat is
fresh, and once it is stale (``Settings.outbox_stale``) any other worker's next claim takes them
over: recovery from a killed process takes seconds, not a claim's lease (at-least-once,
``webhook-id`` lets subscribers drop the duplicates). docs/delivery.md tells operators the whole story.

Sending: at most ``delivery_concurrency`` requests at a time, at most ``delivery_per_host`` to one
callback host (callbacks on our own relay are served in-process and only count against the global
bound). Claimed rows are interleaved by host, so one slow host never starves the others. Outcomes
are written in batches: one transaction per batch, never one per delivery. Retries back off
exponentially with jitter (the first within ``2 * delivery_retry_base`` seconds) and give up after
``delivery_max_age``; the subscription's status then says so.

Faults: no database error ends the outbox. Claiming, loading payloads and the heartbeat back off
and try again; outcomes that could not be written are kept (up to a bound) and written when the
database answers, each only while this worker still holds the row's claim.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections import defaultdict, deque
from collections.abc import Iterable

import anyio
from cachetools import LRUCache
from sqlalchemy.exc import SQLAlchemyError

from hub import store, sup
from hub.errors import URLRefused
from hub.fairness import Slots, netloc
from hub.metrics import HubMetrics
from hub.models import Payload
from hub.netguard import NetGuard
from hub.signing import hub_signature, webhook_signature
from hub.store.workers import node as worker_node
from reversehub.core import db
from reversehub.core.backoff import backoff
from reversehub.core.outbound import OutboundError
from reversehub.core.services import Services

logger = logging.getLogger(__name__)

CLAIM_BATCH = 2000
# A worker claims up to this many times delivery_concurrency rows of hosts that can take them
# (Outbox.claim_room), and skips the hosts that cannot: origins of at most SKIPPED_ORIGINS.
CLAIM_AHEAD = 2
SKIPPED_ORIGINS = 64
FLUSH_BATCH = 1000
FLUSH_DELAY = 0.02
# Outcomes and given-back claims kept while the database cannot take them, at most this many times
# max_inflight; past it the oldest are forgotten and their claims lapse (delivery_claim_seconds).
UNRECORDED_FACTOR = 16
# Backoff of a database call that failed: from this, doubling, up to RETRY_MAX seconds.
RETRY_BASE = 0.1
RETRY_MAX = 5.0
# Payloads kept in memory between the claim that loads them and the attempts that send them (and for
# the next claims of the same fan-out), by the size of their bodies: a few large fat pings must not
# hold the process's memory.
PAYLOAD_CACHE_BYTES = 32 * 1024 * 1024


def _payload_size(payload: Payload) -> int:
    return len(payload.body) + 256  # and the row's other fields, roughly


def origin_of(callback: str) -> str:
    """``scheme://host:port`` of a callback URL, spelled as in the URL (the claim matches it in SQL)."""
    start = callback.find("://") + 3
    end = len(callback)
    for c in "/?#":
        i = callback.find(c, start)
        if 0 <= i < end:
            end = i
    return callback[:end]


def interleave(rows: Iterable[tuple[str, store.Claimed]]) -> list[tuple[str, store.Claimed]]:
    """Round-robin over hosts (the first of each pair), keeping each host's order."""
    by_host: dict[str, deque[tuple[str, store.Claimed]]] = defaultdict(deque)
    for pair in rows:
        by_host[pair[0]].append(pair)
    out: list[tuple[str, store.Claimed]] = []
    queues = list(by_host.values())
    while queues:
        for q in queues:
            out.append(q.popleft())
        queues = [q for q in queues if q]
    return out


class Outbox:
    def __init__(
        self,
        services: Services,
        guard: NetGuard,
        metrics: HubMetrics,
        hub_url: str,
    ) -> None:
        self.services = services
        self.settings = services.settings
        self.guard = guard
        self.metrics = metrics
        self.hub_url = hub_url
        self._wake = anyio.Event()
        self._flush = anyio.Event()
        self._outcomes: list[store.Outcome] = []
        # This worker (hub.store.workers): its id is on every claim it makes.
        self.worker = secrets.token_hex(16)
        self._node = worker_node()
        self._beat_at: float | None = None  # monotonic time of the last heartbeat written
        self._reported: set[str] = set()  # dead workers already logged
        # Every row this worker holds a claim on (in flight, queued, outcome not yet written):
        # id -> (claim token, monotonic time the claim or its last renewal was made).
        self._held: dict[int, tuple[str, float]] = {}
        self._inflight: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Not anyio's semaphores (a cancel scope each, twice per delivery) nor asyncio's (see Slots).
        self._global = Slots(self.settings.delivery_concurrency)
        self._hosts: dict[str, Slots] = {}
        self._host_load: dict[str, int] = defaultdict(int)
        # Rows started per host beyond its connection cap wait their turn in-process; past this
        # many the rest go back to the table for a moment, so one slow host never fills
        # max_inflight and starves the others.
        self.host_backlog = 2 * self.settings.delivery_per_host
        self._queued: dict[str, deque[tuple[float, store.Claimed]]] = defaultdict(deque)
        # How the callbacks of each host with rows here spell its origin (claim_room: skipped in SQL).
        self._origins: dict[str, set[str]] = defaultdict(set)
        self._queued_total = 0
        self.max_queued = 40 * max(self.settings.delivery_concurrency, 16)
        self._giveback: list[tuple[int, str]] = []  # claims given back (due now) at the next write
        self._deferred: list[tuple[int, str]] = []  # claims given back for a moment at the next write
        self._write_failures = 0
        self._payloads: LRUCache[int, Payload] = LRUCache(maxsize=PAYLOAD_CACHE_BYTES, getsizeof=_payload_size)
        self._closing = False
        self.max_inflight = max(4 * self.settings.delivery_concurrency, 64)
        self.max_unrecorded = UNRECORDED_FACTOR * self.max_inflight
        self._outbound = services.outbound
        self._is_own = services.is_own
        # The labelled children, looked up once: labels() costs a lock and a dict walk per delivery.
        self._counted = {k: metrics.deliveries.labels(k) for k in ("delivered", "gone", "failed", "retry")}

    def wake(self) -> None:
        self._wake.set()

    def room(self) -> tuple[int, list[str]]:
        """How many deliveries this worker would claim now (0 while its claims might not hold), and
        the origins the claim must skip (:meth:`claim_room`): a publish claims as the worker would."""
        if self._closing or not self.alive():
            return 0, []
        saturated = self._saturated()
        return self.claim_room(saturated), self._skipped_origins(saturated)

    async def hand(self, rows: list[store.Claimed], payload: Payload) -> None:
        """Send ``rows`` of ``payload``, claimed for this worker by the publish that stored them
        (:func:`hub.store.claim_payload`): the body is in memory already, nothing to load."""
        if _payload_size(payload) <= PAYLOAD_CACHE_BYTES:
            self._payloads[payload.id] = payload
        await self._take(rows)

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat)
                tg.start_soon(self._flusher)
                await self._dispatch()
                tg.cancel_scope.cancel()
        finally:
            for task in list(self._tasks):
                task.cancel()
            with anyio.CancelScope(shield=True):
                if self._tasks:
                    await asyncio.gather(*self._tasks, return_exceptions=True)
                await self._drain()

    def alive(self) -> bool:
        """Whether this worker's heartbeat is fresh enough that its claims hold (a margin of one
        heartbeat before others may judge it dead)."""
        if self._beat_at is None:
            return False
        margin = self.settings.outbox_stale - self.settings.outbox_heartbeat
        return time.monotonic() - self._beat_at < margin

    async def _dispatch(self) -> None:
        failures = 0
        while not self._closing:
            self._wake = anyio.Event()
            saturated = self._saturated()
            room = self.claim_room(saturated)
            rows: list[store.Claimed] = []
            # Claims made while the heartbeat is stale could be taken over as they are made.
            if room > 0 and self.alive():
                try:
                    rows = await store.claim(
                        self.services.sessions,
                        room,
                        self.settings.delivery_claim_seconds,
                        self.worker,
                        self.settings.outbox_stale,
                        skip_origins=self._skipped_origins(saturated),
                    )
                except Exception as exc:
                    failures += 1
                    self._failed("claiming deliveries", failures, exc)
                    await self._pause(backoff(failures, RETRY_BASE, RETRY_MAX))
                    continue
                if failures:
                    logger.info("claiming deliveries works again")
                failures = 0
            if rows:
                await self._take(rows)
                continue
            with anyio.move_on_after(self.settings.outbox_scan_interval):
                await self._wake.wait()

    def _saturated(self) -> list[str]:
        """The hosts that have as many rows started here as they may (``host_backlog``)."""
        backlog = self.host_backlog
        return [host for host, load in self._host_load.items() if host and load >= backlog]

    def claim_room(self, saturated: list[str]) -> int:
        """How many rows to claim now: what this process can start sending soon, at most CLAIM_BATCH.

        Claimed rows are out of other processes' reach until settled, so a worker claims what its
        free sending slots (and as many again, so that a send finishing finds the next row here)
        can take, not all it could hold: a large publish is then shared by every process. Rows of
        saturated hosts do not count against that room, and the claim skips those hosts in SQL:
        otherwise a never-answering host's rows would fill the room, and the hosts that answer
        would get nothing claimed (the trap of an earlier "claim what can start soon")."""
        stuck = sum(self._host_load[host] + len(self._queued.get(host, ())) for host in saturated)
        busy = len(self._inflight) + self._queued_total - stuck
        room = CLAIM_AHEAD * self.settings.delivery_concurrency - busy
        return max(0, min(room, self.max_inflight - len(self._inflight), CLAIM_BATCH))

    def _skipped_origins(self, saturated: list[str]) -> list[str]:
        """How the callbacks of the ``saturated`` hosts spell their origins, for the claim to skip
        them; at most SKIPPED_ORIGINS (a host spelled many ways is skipped as far as that goes, and
        what is claimed for it beyond waits in the bounded queue)."""
        origins = [origin for host in saturated for origin in self._origins.get(host, ())]
        return origins[:SKIPPED_ORIGINS]

    async def _take(self, rows: list[store.Claimed]) -> None:
        """Start (or queue, or defer) the claimed ``rows``."""
        now = time.monotonic()
        for r in rows:
            self._held[r.id] = (r.token, now)
        try:
            await self._load_payloads({r.payload_id for r in rows})
        except Exception as exc:
            # Give them back rather than count an attempt nobody made; if the database stays away,
            # our heartbeat goes stale and another worker takes them over.
            self._failed(f"loading payloads ({len(rows)} claims given back)", 1, exc)
            self._giveback.extend((r.id, r.token) for r in rows)
            self._flush.set()
            await self._pause(backoff(1, RETRY_BASE, RETRY_MAX))
            return
        for host, row in interleave((self._host_key(r.callback), r) for r in rows):
            if host:
                self._origins[host].add(origin_of(row.callback))
            if not host or self._host_load[host] < self.host_backlog:
                self._start(row, host)
            elif self._queued_total < self.max_queued:
                # Claimed, waiting in memory for its host: it does not take a place in
                # max_inflight, so other hosts' deliveries keep being claimed and sent.
                self._queued[host].append((now, row))
                self._queued_total += 1
            else:
                self._deferred.append((row.id, row.token))
        if self._deferred:
            self._flush.set()

    async def _pause(self, seconds: float) -> None:
        """Back off, but not past a wake-up: close() must not wait out a backoff."""
        with anyio.move_on_after(seconds):
            await self._wake.wait()

    def _failed(self, what: str, failures: int, exc: Exception) -> None:
        """Log a failed database call: once when it starts failing (an outage in one line, anything
        else with its traceback), quietly while it keeps failing."""
        if failures > 1:
            logger.debug("%s failed again (%d times)", what, failures, exc_info=exc)
        elif db.unavailable(exc):
            logger.warning("%s waits for the database (%s); retrying with backoff", what, getattr(exc, "orig", exc))
        else:
            logger.warning("%s failed; retrying with backoff", what, exc_info=exc)

    async def _heartbeat(self) -> None:
        """Renew this worker's heartbeat, renew the leases of claims held long, report dead workers.

        A failed heartbeat is retried with backoff; sends in flight go on meanwhile (their outcomes
        are written only while their claims still hold, :func:`hub.store.record`)."""
        sessions = self.services.sessions
        period = self.settings.outbox_heartbeat
        failures = 0
        while True:
            try:
                # A restart on the same node (or a sibling of --workers killed): the process is
                # gone, so its claims need not wait for its heartbeat to go stale. First, before
                # this worker's first claim.
                for worker in await store.judge_node(sessions, self._node, self.worker):
                    if worker not in self._reported:
                        self._reported.add(worker)
                        logger.warning("outbox worker %s of this node is gone; taking its claims over", worker)
                await store.beat(sessions, self.worker, self._node, os.getpid())
                self._beat_at = time.monotonic()
                self._wake.set()  # the first beat lets the dispatcher claim
                if failures:
                    logger.info("outbox heartbeat written again after %d failures", failures)
                failures = 0
                await self._renew()
                await self._report_dead()
            except Exception as exc:
                failures += 1
                self._failed("the outbox heartbeat", failures, exc)
                await anyio.sleep(backoff(failures, period / 4, period))
                continue
            await anyio.sleep(period)

    async def _renew(self) -> None:
        """Extend the lease of claims held for half of it, or that would lapse before three more
        heartbeats (a send queued behind a slow host, a slow callback, an outcome the database did
        not take yet): a live worker's claim never lapses under it."""
        lease = self.settings.delivery_claim_seconds
        due = min(lease / 2, lease - 3 * self.settings.outbox_heartbeat)
        now = time.monotonic()
        old = [(i, token) for i, (token, since) in self._held.items() if now - since > due]
        if old:
            await store.renew(self.services.sessions, old, lease)
            for i, token in old:
                if self._held.get(i, (None,))[0] == token:
                    self._held[i] = (token, now)

    async def _report_dead(self) -> None:
        """Log, once per dead worker, that its claims are being taken over (no URLs: they hold tokens)."""
        for w in await store.dead(self.services.sessions, self.settings.outbox_stale):
            if w.id in self._reported:
                continue
            self._reported.add(w.id)
            logger.warning(
                "outbox worker %s on %s (pid %d) silent for %.1f s; taking over its %d claimed deliveries",
                w.id,
                w.node,
                w.pid,
                w.silent_for,
                w.claims,
            )
        if len(self._reported) > 10_000:
            self._reported.clear()

    def _start(self, row: store.Claimed, host: str) -> None:
        self._host_load[host] += 1
        self._inflight.add(row.id)
        # Plain asyncio tasks: a task group's cancel scope per child costs more than a delivery to
        # our own relay does, and a fan-out spawns thousands; run() cancels what is left.
        task = asyncio.get_running_loop().create_task(self._send(row, host))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _next_queued(self, host: str) -> None:
        """A place for ``host`` came free: start its next queued delivery, if any."""
        queue = self._queued.get(host)
        while queue and self._host_load[host] < self.host_backlog:
            _, row = queue.popleft()
            self._queued_total -= 1
            self._start(row, host)
        if queue is not None and not queue:
            del self._queued[host]

    async def _load_payloads(self, ids: set[int]) -> dict[int, Payload]:
        """Load the payloads of ``ids`` not in memory yet; returns those loaded."""
        missing = ids - self._payloads.keys()
        if not missing:
            return {}
        loaded = await store.payloads(self.services.sessions, missing)
        for payload_id, payload in loaded.items():
            if _payload_size(payload) <= PAYLOAD_CACHE_BYTES:  # a larger one is sent without being kept
                self._payloads[payload_id] = payload
        return loaded

    def _defer_seconds(self) -> float:
        return min(1.0, max(0.05, self.settings.outbox_scan_interval))

    def _host_key(self, callback: str) -> str:
        """The callback's host:port; empty for our own relay (served in-process, no connection
        to share fairly, so only the global bound applies)."""
        if self._is_own(callback):
            return ""
        return netloc(callback)

    def _host_limit(self, host: str) -> Slots | None:
        if not host:
            return None
        slots = self._hosts.get(host)
        if slots is None:
            slots = self._hosts[host] = Slots(self.settings.delivery_per_host)
        return slots

    async def _send(self, row: store.Claimed, host: str) -> None:
        outcome: store.Outcome | None
        try:
            limit = self._host_limit(host)
            if limit is None:
                async with self._global:
                    outcome = await self._attempt(row)
            else:
                async with limit, self._global:
                    outcome = await self._attempt(row)
        except Exception as exc:  # a bug must not lose the row: record it as a failed attempt
            logger.exception("delivery %d crashed", row.id)
            outcome = self._failure(row, None, type(exc).__name__)
        self._inflight.discard(row.id)
        self._host_load[host] -= 1
        self._next_queued(host)
        if not self._host_load[host]:  # nothing of this host is running or waiting
            del self._host_load[host]
            self._hosts.pop(host, None)
            self._origins.pop(host, None)
        if outcome is None:
            self._giveback.append((row.id, row.token))
        else:
            self._outcomes.append(outcome)
        self._flush.set()

    def headers(self, row: store.Claimed, payload: Payload, now: float) -> dict[str, str]:
        """The delivery headers (W3C WebSub 7, 8; Standard Webhooks; X-Hub-Sequence)."""
        msg_id = f"msg_{payload.uid}_{row.subscription_id}"
        timestamp = int(now)
        headers = {
            "Content-Type": payload.content_type,
            "Link": f'<{self.hub_url}>; rel="hub", <{row.topic}>; rel="self"',
            "X-Hub-Sequence": str(row.seq),
            # SUP (FriendFeed 2008): the topic's id in the hub's own SUP document (GET /sup).
            "X-SUP-ID": sup.header(self.settings.public_origin + "/sup", row.topic),
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
        }
        if row.secret:
            headers["X-Hub-Signature"] = hub_signature(row.secret, payload.body, self.settings.signature_algorithm)
            headers["webhook-signature"] = webhook_signature(row.secret, msg_id, timestamp, payload.body)
        return headers

    async def _attempt(self, row: store.Claimed) -> store.Outcome | None:
        """Send ``row`` once; None: not attempted (its payload could not be read), give it back."""
        payload = self._payloads.get(row.payload_id)
        if payload is None:  # loaded at the claim and evicted since, or too large to keep
            try:
                payload = (await self._load_payloads({row.payload_id}))[row.payload_id]
            except (SQLAlchemyError, OSError) as exc:
                self._failed(f"loading the payload of delivery {row.id} (given back)", 1, exc)
                return None
        try:
            await self.guard.check(row.callback)
        except URLRefused as exc:
            return store.Outcome(row.id, row.subscription_id, row.token, "failed", None, str(exc))
        now = time.time()
        headers = self.headers(row, payload, now)
        try:
            status = await self._outbound.post(row.callback, headers, payload.body, self.settings.delivery_timeout)
        except OutboundError as exc:
            return self._failure(row, None, str(exc))
        if 200 <= status < 300:
            self._counted["delivered"].inc()
            self.metrics.latency.observe(max(0.0, time.time() - row.created_at))
            return store.Outcome(row.id, row.subscription_id, row.token, "delivered", status, None)
        if status == 410:  # W3C WebSub 7: the subscriber does not want it any more
            self._counted["gone"].inc()
            return store.Outcome(row.id, row.subscription_id, row.token, "gone", status, "callback answered 410 Gone")
        return self._failure(row, status, f"callback answered {status}")

    def _failure(self, row: store.Claimed, status: int | None, error: str) -> store.Outcome:
        # The callback URL is not logged: subscribers put tokens in them.
        logger.info(
            "delivery %d (subscription %d) attempt %d failed: %s", row.id, row.subscription_id, row.attempts + 1, error
        )
        now = time.time()
        s = self.settings
        if now - row.created_at >= s.delivery_max_age:
            self._counted["failed"].inc()
            return store.Outcome(row.id, row.subscription_id, row.token, "failed", status, error)
        self._counted["retry"].inc()
        retry_at = now + backoff(row.attempts + 1, s.delivery_retry_base, s.delivery_retry_max)
        return store.Outcome(row.id, row.subscription_id, row.token, "retry", status, error, retry_at)

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            if len(self._outcomes) < FLUSH_BATCH and self._inflight:
                # More outcomes are on their way: one transaction for many beats one for each.
                await anyio.sleep(FLUSH_DELAY)
            self._flush = anyio.Event()
            if not await self._write():
                await anyio.sleep(backoff(self._write_failures, RETRY_BASE, RETRY_MAX))
                self._flush.set()

    async def _write(self) -> bool:
        """Write the outcomes and give back the claims known so far; False if the database failed
        (they are kept for the next try: within the bound, nothing known is dropped)."""
        if not (self._outcomes or self._giveback or self._deferred):
            return True
        batch, self._outcomes = self._outcomes, []
        giveback, self._giveback = self._giveback, []
        deferred, self._deferred = self._deferred, []
        sessions = self.services.sessions
        try:
            # Each write is conditional on the claim token: one that succeeded before a later one
            # failed changes nothing when written again.
            if batch:
                await store.record(sessions, batch)
            if giveback:
                await store.release(sessions, giveback)
            if deferred:
                await store.release(sessions, deferred, time.time() + self._defer_seconds())
        except Exception as exc:
            self._write_failures += 1
            self._failed(f"recording {len(batch)} delivery outcomes", self._write_failures, exc)
            self._outcomes[:0] = batch
            self._giveback[:0] = giveback
            self._giveback.extend(deferred)  # by the time they are written, their host may have room
            self._bound_unrecorded()
            return False
        if self._write_failures:
            logger.info("delivery outcomes recorded again after %d failures", self._write_failures)
        self._write_failures = 0
        self._forget([(o.id, o.token) for o in batch])
        self._forget(giveback)
        self._forget(deferred)
        self._wake.set()
        return True

    def _forget(self, claims: Iterable[tuple[int, str]]) -> None:
        """These claims are settled or given up: no longer held, never renewed. A row claimed again
        since (a retry that fell due) is held under its new token and stays."""
        for i, token in claims:
            if self._held.get(i, (None,))[0] == token:
                del self._held[i]

    def _bound_unrecorded(self) -> None:
        """Past the bound, forget the oldest unwritten outcomes: their claims lapse after the lease
        (delivery_claim_seconds, no longer renewed) and the rows are sent again; memory stays bounded."""
        over = len(self._outcomes) + len(self._giveback) - self.max_unrecorded
        if over <= 0:
            return
        dropped = self._outcomes[:over]
        del self._outcomes[:over]
        rest = over - len(dropped)
        released = self._giveback[:rest]
        del self._giveback[:rest]
        self._forget([(o.id, o.token) for o in dropped])
        self._forget(released)
        logger.warning(
            "%d delivery outcomes could not be recorded and are forgotten; their claims lapse in %.0f s "
            "and those deliveries are sent again",
            over,
            self.settings.delivery_claim_seconds,
        )

    async def _drain(self) -> None:
        """On shutdown: write what is known, give back every claim, remove this worker's row."""
        queued = [(row.id, row.token) for q in self._queued.values() for _, row in q]
        self._giveback.extend(queued)
        sessions = self.services.sessions
        try:
            await self._write()
            await store.release_worker(sessions, self.worker)
            await store.retire(sessions, self.worker)
        except Exception:
            # Others take the claims over once this worker's heartbeat is stale.
            logger.exception("outbox drain failed")
