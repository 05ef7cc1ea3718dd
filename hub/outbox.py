"""The delivery outbox: workers that send pending deliveries, retry failures, record outcomes.

Work is rows (:mod:`hub.store`): a publisher's 2xx comes after the payload and one delivery row per
subscriber are committed, so a killed process loses nothing; whatever it had claimed is taken over
once the claim expires (at-least-once, ``webhook-id`` lets subscribers drop the duplicates).

Sending: at most ``delivery_concurrency`` requests at a time, at most ``delivery_per_host`` to one
callback host (callbacks on our own relay are served in-process and only count against the global
bound). Claimed rows are interleaved by host, so one slow host never starves the others. Outcomes
are written in batches: one transaction per batch, never one per delivery. Retries back off
exponentially with jitter (the first within ``2 * delivery_retry_base`` seconds) and give up after
``delivery_max_age``; the subscription's status then says so.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict, deque
from collections.abc import Iterable

import anyio
from cachetools import LRUCache

from hub import store, sup
from hub.errors import URLRefused
from hub.fairness import Slots, netloc
from hub.metrics import HubMetrics
from hub.models import Payload
from hub.netguard import NetGuard
from hub.signing import hub_signature, webhook_signature
from reversehub.core.backoff import backoff
from reversehub.core.outbound import OutboundError
from reversehub.core.services import Services

logger = logging.getLogger(__name__)

CLAIM_BATCH = 2000
FLUSH_BATCH = 1000
FLUSH_DELAY = 0.02
# Payloads kept in memory between the claim that loads them and the attempts that send them (and for
# the next claims of the same fan-out), by the size of their bodies: a few large fat pings must not
# hold the process's memory.
PAYLOAD_CACHE_BYTES = 32 * 1024 * 1024


def _payload_size(payload: Payload) -> int:
    return len(payload.body) + 256  # and the row's other fields, roughly


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
        self._queued_total = 0
        self.max_queued = 40 * max(self.settings.delivery_concurrency, 16)
        self._stale: list[int] = []  # queued claims given back at the next write
        self._payloads: LRUCache[int, Payload] = LRUCache(maxsize=PAYLOAD_CACHE_BYTES, getsizeof=_payload_size)
        self._closing = False
        self.max_inflight = max(4 * self.settings.delivery_concurrency, 64)
        self._outbound = services.outbound
        self._is_own = services.is_own
        # The labelled children, looked up once: labels() costs a lock and a dict walk per delivery.
        self._counted = {k: metrics.deliveries.labels(k) for k in ("delivered", "gone", "failed", "retry")}

    def wake(self) -> None:
        self._wake.set()

    def close(self) -> None:
        self._closing = True
        self._wake.set()

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
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

    async def _dispatch(self) -> None:
        while not self._closing:
            self._wake = anyio.Event()
            room = self.max_inflight - len(self._inflight)
            rows: list[store.Claimed] = []
            if room > 0:
                try:
                    rows = await store.claim(
                        self.services.sessions, min(room, CLAIM_BATCH), self.settings.delivery_claim_seconds
                    )
                except Exception:
                    logger.exception("claiming deliveries failed")
            if rows:
                await self._load_payloads({r.payload_id for r in rows})
                deferred = []
                now = time.monotonic()
                for host, row in interleave((self._host_key(r.callback), r) for r in rows):
                    if not host or self._host_load[host] < self.host_backlog:
                        self._start(row, host)
                    elif self._queued_total < self.max_queued:
                        # Claimed, waiting in memory for its host: it does not take a place in
                        # max_inflight, so other hosts' deliveries keep being claimed and sent.
                        self._queued[host].append((now, row))
                        self._queued_total += 1
                    else:
                        deferred.append(row.id)
                if deferred:
                    await store.defer(self.services.sessions, deferred, time.time() + self._defer_seconds())
                continue
            with anyio.move_on_after(self.settings.outbox_scan_interval):
                await self._wake.wait()

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
            claimed_at, row = queue.popleft()
            self._queued_total -= 1
            if time.monotonic() - claimed_at > self.settings.delivery_claim_seconds / 2:
                # Held long enough that its claim may run out mid-send: give it back instead.
                self._stale.append(row.id)
                continue
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

    async def _attempt(self, row: store.Claimed) -> store.Outcome:
        payload = self._payloads.get(row.payload_id)
        if payload is None:  # loaded at the claim and evicted since, or too large to keep
            payload = (await self._load_payloads({row.payload_id}))[row.payload_id]
        try:
            await self.guard.check(row.callback)
        except URLRefused as exc:
            return store.Outcome(row.id, row.subscription_id, "failed", None, str(exc))
        now = time.time()
        headers = self.headers(row, payload, now)
        try:
            status = await self._outbound.post(row.callback, headers, payload.body, self.settings.delivery_timeout)
        except OutboundError as exc:
            return self._failure(row, None, str(exc))
        if 200 <= status < 300:
            self._counted["delivered"].inc()
            self.metrics.latency.observe(max(0.0, time.time() - row.created_at))
            return store.Outcome(row.id, row.subscription_id, "delivered", status, None)
        if status == 410:  # W3C WebSub 7: the subscriber does not want it any more
            self._counted["gone"].inc()
            return store.Outcome(row.id, row.subscription_id, "gone", status, "callback answered 410 Gone")
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
            return store.Outcome(row.id, row.subscription_id, "failed", status, error)
        self._counted["retry"].inc()
        retry_at = now + backoff(row.attempts + 1, s.delivery_retry_base, s.delivery_retry_max)
        return store.Outcome(row.id, row.subscription_id, "retry", status, error, retry_at)

    async def _flusher(self) -> None:
        while True:
            await self._flush.wait()
            if len(self._outcomes) < FLUSH_BATCH and self._inflight:
                # More outcomes are on their way: one transaction for many beats one for each.
                await anyio.sleep(FLUSH_DELAY)
            self._flush = anyio.Event()
            await self._write()

    async def _write(self) -> None:
        if not self._outcomes:
            return
        batch, self._outcomes = self._outcomes, []
        stale, self._stale = self._stale, []
        try:
            await store.record(self.services.sessions, batch)
            if stale:
                await store.release(self.services.sessions, stale)
        except Exception:
            logger.exception("recording %d delivery outcomes failed; their claims will expire", len(batch))
        self._wake.set()

    async def _drain(self) -> None:
        """On shutdown: write what is known, give back claims not sent."""
        try:
            await self._write()
            queued = [row.id for q in self._queued.values() for _, row in q]
            await store.release(self.services.sessions, [*self._inflight, *queued, *self._stale])
        except Exception:
            logger.exception("outbox drain failed")
