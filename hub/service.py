"""The hub: subscriptions, publishing, feed fetching and the delivery outbox, behind plain methods.

Built by the app factory with the shared :class:`~reversehub.core.services.Services`; ``run()`` is its
background work (outbox workers, fetcher, verifications, broker listeners, lease expiry and
pruning) until cancelled, ``aclose()`` stops it taking work. Endpoints (:mod:`hub.endpoints`) parse
requests and call these methods.

Broker channels: ``hub.work`` (deliveries were queued: every process's workers wake),
``hub.fetch`` (topics were pinged) and ``relay.online`` (a relay name got a poller: its pending
deliveries are due now).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from hub import store, sup
from hub.errors import KeyReused, NotOwner
from hub.feeds import sha
from hub.fetcher import Fetcher
from hub.metrics import HubMetrics
from hub.models import Delivery, DeliveryState, Subscription, Topic
from hub.netguard import NetGuard
from hub.outbox import Outbox
from hub.publish import FatPing, Ping
from hub.signing import PROOF_WINDOW, check_ownership
from hub.store import idempotency
from hub.subscriptions import SubscriptionRequest, Verifier
from reversehub.core import db
from reversehub.core.broker import BrokerUnavailable
from reversehub.core.contracts import RELAY_ONLINE
from reversehub.core.services import Services
from reversehub.core.supervise import supervised

logger = logging.getLogger(__name__)

WORK = "hub.work"
FETCH = "hub.fetch"
SUP_PERIODS = (60, 300, 600)
PRUNE_EVERY = 300.0
# A topic nobody subscribes to is deleted after this long without a fetch, publish or poll: longer
# than any verification of its first subscriber takes.
TOPIC_IDLE = 3600.0
MAINTAIN_EVERY = 1.0
PUBLISHED = 204  # what a stored fat ping is answered: a retry with its Idempotency-Key gets the same
# One answer for every proof that does not hold, so that /hub/status tells nobody whether a
# (callback, topic) pair exists or has a secret.
NOT_PROVED = "not proved: no such subscription, no hub.secret, or a wrong or expired hub.signature"


@dataclass(frozen=True)
class Status:
    subscription: Subscription
    pending: int
    oldest_retained_seq: int | None


class Hub:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.hub_url = self.settings.public_origin + "/hub"
        self.metrics = HubMetrics(services.metrics)
        self.guard = NetGuard(self.settings, services.is_own)
        self.outbox = Outbox(services, self.guard, self.metrics, self.hub_url)
        self.fetcher = Fetcher(services, self.guard, self.metrics, on_enqueued=self.outbox.wake)
        self.verifier = Verifier(services, self.guard, baseline=self.fetcher.baseline, on_queued=self.outbox.wake)
        self._closing = False
        self._online: set[str] = set()  # relay.online prefixes not yet hurried
        self._online_event = anyio.Event()

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Every background loop, each supervised: one that fails is logged and started again
        (:func:`reversehub.core.supervise.supervised`), never the end of the others."""
        loops: dict[str, Callable[[], Awaitable[object]]] = {
            "the hub's outbox": self.outbox.run,
            "the hub's fetcher": self.fetcher.run,
            "the hub's verifier": self.verifier.run,
            f"the hub's {WORK} listener": functools.partial(self._listen, WORK, self._on_work),
            f"the hub's {FETCH} listener": functools.partial(self._listen, FETCH, self._on_fetch),
            f"the hub's {RELAY_ONLINE} listener": functools.partial(self._listen, RELAY_ONLINE, self._on_relay_online),
            "the hub's relay.online pass": self._hurry,
            "the hub's maintenance": self._maintain,
        }
        async with anyio.create_task_group() as tg:
            for name, loop in loops.items():
                tg.start_soon(supervised, name, loop)

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` began."""
        return self._closing

    async def aclose(self) -> None:
        """Stop taking work; wait (within the shutdown grace) for verified subscriptions to be stored.

        The server's drain calls this first, the lifespan again before cancelling :meth:`run`.
        Verifications whose callback already echoed the challenge are committed; the rest may be
        abandoned (:mod:`hub.subscriptions`)."""
        self._closing = True
        self.outbox.close()
        self.fetcher.close()
        await self.verifier.aclose()

    async def _listen(self, channel: str, handler: Callable[[bytes], object]) -> None:
        while True:
            try:
                async with self.services.broker.subscribe(channel) as sub:
                    async for message in sub:
                        result = handler(message)
                        if hasattr(result, "__await__"):
                            await result
            except anyio.get_cancelled_exc_class():
                raise
            except Exception as exc:
                if self._closing:
                    return
                if isinstance(exc, BrokerUnavailable):  # a restart or a blip: say so, without a traceback
                    logger.warning("listening on %s: %s; resubscribing", channel, exc)
                else:
                    logger.exception("listening on %s failed; resubscribing", channel)
                await anyio.sleep(1.0)

    def _on_work(self, _message: bytes) -> None:
        self.outbox.wake()

    def _on_fetch(self, _message: bytes) -> None:
        self.fetcher.wake()

    def _on_relay_online(self, message: bytes) -> None:
        prefix = message.decode("utf-8", "replace")
        if prefix:
            self._online.add(prefix)
            self._online_event.set()

    async def _hurry(self) -> None:
        """relay.online: the names that got a poller since the last pass, all in one transaction.

        Their pending deliveries go at once (DESIGN: a name that gets a poller again does not wait
        out its backoff). Names that come online while a pass runs wait for the next one, so a mass
        registration (thousands of names in seconds) costs a few passes, not one write per name."""
        while True:
            await self._online_event.wait()
            self._online_event = anyio.Event()
            prefixes, self._online = self._online, set()
            try:
                if await store.hurry(self.services.sessions, prefixes):
                    self.outbox.wake()
            except Exception:
                logger.exception("making deliveries to %d relay names due failed", len(prefixes))

    async def _maintain(self) -> None:
        last_prune = 0.0
        while True:
            try:
                now = time.time()
                await store.expire_leases(self.services.sessions, now)
                self.metrics.pending.set(await store.pending_count(self.services.sessions))
                if now - last_prune > PRUNE_EVERY:
                    await store.prune(self.services.sessions, now - self.settings.delivery_retention)
                    await store.prune_topics(self.services.sessions, now - TOPIC_IDLE)
                    await idempotency.prune(self.services.sessions, now - self.settings.publish_idempotency_retention)
                    last_prune = now
            except Exception as exc:
                if db.unavailable(exc):  # an outage, not a bug: one line per pass while it lasts
                    logger.warning("hub maintenance waits for the database (%s)", getattr(exc, "orig", None) or exc)
                else:
                    logger.exception("hub maintenance failed")
            await anyio.sleep(max(MAINTAIN_EVERY, self.settings.outbox_scan_interval))

    # -- operations ----------------------------------------------------------------------------

    def request(self, req: SubscriptionRequest) -> None:
        """Take a (validated) subscribe/unsubscribe request; verification follows asynchronously."""
        self.verifier.submit(req)

    async def publish(self, ping: Ping | FatPing) -> int:
        """Record a publish durably; returns the deliveries queued (0 for a ping, fetched later)."""
        if isinstance(ping, Ping):
            recorded = await store.record_pings(self.services.sessions, ping.urls)
            self.metrics.publishes.labels("ping").inc()
            if recorded:  # a ping of topics nobody subscribes to wakes no fetcher anywhere
                self.fetcher.wake()
                await self._announce(FETCH)
            return 0
        queued = await self._fat(ping)
        assert isinstance(queued, int)  # no key, no prior publish
        return queued

    async def publish_once(self, ping: FatPing, key: str) -> int | None:
        """:meth:`publish` a fat ping with the publisher's ``Idempotency-Key``
        (:mod:`hub.store.idempotency`); the deliveries queued, or None when the key's publish was
        stored before, and this retry stored nothing. :class:`KeyReused` when that publish was
        another request."""
        key_digest = idempotency.digest(ping.topic, key)
        request = idempotency.fingerprint(ping.content_type, ping.body)
        try:
            outcome = await self._fat(ping, (key_digest, request))
        except IntegrityError:
            # Two attempts with one key at once: the other committed first. Answer as it was.
            found = await idempotency.find(self.services.sessions, key_digest)
            if found is None:
                raise
            outcome = found
        if isinstance(outcome, int):
            return outcome
        if outcome.fingerprint != request:
            raise KeyReused("this Idempotency-Key was used for another request to this topic")
        self.metrics.publishes.labels("retried").inc()
        return None

    async def _fat(self, ping: FatPing, key: tuple[str, str] | None = None) -> int | idempotency.Prior:
        """Store a fat ping: the deliveries queued, or, for a key stored before, what its first
        publish was (then nothing is stored). The key commits with the payload."""
        entries = await self.fetcher.entries_of(ping.content_type, ping.body)
        now = time.time()
        outbox = self.outbox
        # Shielded from the commit to the hand-off: rows claimed for this worker and never handed
        # to it would wait for their lease to run out.
        with anyio.CancelScope(shield=True):
            async with store.writing(self.services.sessions) as s:
                if key is not None:
                    found = await idempotency.prior(s, key[0])
                    if found is not None:
                        return found
                    idempotency.remember(s, key[0], key[1], PUBLISHED, now)
                enqueued = await store.enqueue(
                    s,
                    ping.topic,
                    ping.content_type,
                    ping.body,
                    now,
                    self.settings.max_pending_per_subscription,
                    # What went out is remembered as a fetch's would be (its entries, its body),
                    # so no fetch sends it again; a pinged topic is polled only as a safety net.
                    topic_values={
                        "body_hash": sha(ping.body),
                        "pinged_at": now,
                        "next_poll_at": now + self.settings.poll_max_interval,
                    },
                )
                queued = enqueued.deliveries
                # This process's outbox claims what it has room for in this transaction: the first
                # deliveries go out as the publisher gets its 2xx, not after another transaction.
                room, skip = outbox.room() if queued else (0, [])
                claimed = (
                    await store.claim_payload(
                        s, enqueued.payload_id, room, self.settings.delivery_claim_seconds, outbox.worker, skip
                    )
                    if room
                    else []
                )
                topic_id = await store.topic_id(s, ping.topic) if entries else None
                if topic_id is not None:
                    await store.remember_entries(s, topic_id, entries)
            self.metrics.publishes.labels("fat").inc()
            if claimed and enqueued.payload is not None:
                await outbox.hand(claimed, enqueued.payload)
        if queued > len(claimed):
            outbox.wake()
            await self._announce(WORK)
        return queued

    async def _announce(self, channel: str) -> None:
        try:
            await self.services.broker.publish(channel, b"")
        except BrokerUnavailable as exc:  # an outage: one line, the work is stored all the same
            logger.warning("announcing on %s: %s (other processes find the work on their next scan)", channel, exc)
        except Exception:
            logger.exception("announcing on %s failed (other processes find the work on their next scan)", channel)

    async def owned(
        self, action: str, callback: str, topic: str, timestamp: int, proof: str, *params: str
    ) -> Subscription:
        """The subscription, if the caller proved it knows the subscription's secret
        (:func:`hub.signing.check_ownership`) with a proof not used before.

        Every failure is the same :class:`NotOwner`, and a missing subscription costs the same HMAC
        as a present one. A proof is remembered in the broker (hashed) for as long as its timestamp
        could pass, so one copied from a log is worth nothing."""
        sub = await store.find(self.services.sessions, topic, callback)
        secret = sub.secret if sub is not None else None
        proved = check_ownership(secret or "-", action, callback, topic, timestamp, proof, time.time(), *params)
        if sub is None or not secret or not proved:
            raise NotOwner(NOT_PROVED)
        used = "hub:proof:" + hashlib.sha256(proof.encode()).hexdigest()[:32]
        if not await self.services.broker.set(used, b"", ttl=2 * PROOF_WINDOW + 1, nx=True):
            raise NotOwner("this hub.signature was used already: sign a new hub.timestamp")
        return sub

    async def status(self, callback: str, topic: str, timestamp: int, proof: str) -> Status:
        """A subscription's state, for the owner of its secret (``/hub/status``)."""
        sub = await self.owned("status", callback, topic, timestamp, proof)
        async with self.services.sessions() as s:
            pending = (
                await s.execute(
                    select(func.count()).where(
                        Delivery.subscription_id == sub.id, Delivery.state == DeliveryState.PENDING
                    )
                )
            ).scalar_one()
        oldest = await store.oldest_retained(self.services.sessions, sub.id)
        return Status(sub, int(pending), oldest)

    async def replay(self, callback: str, topic: str, timestamp: int, proof: str, since: int) -> int:
        """Queue again the retained deliveries after ``since``, for the owner of the secret (``/hub/replay``)."""
        sub = await self.owned("replay", callback, topic, timestamp, proof, str(since))
        queued = await store.replay(self.services.sessions, sub.id, since)
        if queued:
            self.outbox.wake()
            await self._announce(WORK)
        return queued

    async def sup_document(self, seconds: int | None) -> bytes:
        period = seconds if seconds in SUP_PERIODS else SUP_PERIODS[0]
        now = time.time()
        async with self.services.sessions() as s:
            rows = (
                await s.execute(
                    select(Topic.url, Topic.version).where(Topic.updated_at >= now - period).order_by(Topic.updated_at)
                )
            ).all()
        base = self.settings.public_origin + "/sup"
        return sup.document(
            [(url, version) for url, version in rows], now, period, {p: f"{base}?seconds={p}" for p in SUP_PERIODS}
        )
