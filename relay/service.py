"""The relay service: registrations, polls, replies and requesters (ReverseHttp, Garnock-Jones 2009).

Endpoints (relay.endpoints) parse HTTP and call these methods; they return values or raise
relay.errors. Durable state is in relay.registry (rows), transient state in relay.queue (broker).
This object holds only what belongs to this process: the polls parked here (so a DELETE can end
them with 410 and shutdown with 204) and which names had pollers since the last lease sweep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.exc import SQLAlchemyError

from relay import envelope
from relay.errors import (
    BadReply,
    Gone,
    InvalidInput,
    NoPoller,
    NoReply,
    NotFound,
    RelayError,
    RequesterError,
    Withdrawn,
)
from relay.held import HeldBytes
from relay.inspector import Inspector
from relay.mailbox import NUDGE, Mailbox, accepted, mail_id
from relay.ptth import PtthPool
from relay.ptth_connection import Response
from relay.queue import CHANGED_CHANNEL, Delivery, Dispatcher, Item, queue_key, seen_key
from relay.registry import CACHE_TTL, SOLO_CACHE_TTL, Reg, Registry, cap_name, private_cap
from relay.routes import RelayUrls
from relay.wire import WireError, serialize_response
from reversehub.core import db
from reversehub.core.broker import BrokerClosed, BrokerUnavailable
from reversehub.core.services import Services
from reversehub.core.supervise import supervised

logger = logging.getLogger(__name__)

# Seconds between two prunes of expired mail and of inspected requests of names that are gone.
PRUNE_INTERVAL = 60.0


class Park:
    """One poll waiting here; ``end(reason)`` stops the wait from another task.

    Plain asyncio (task.cancel + uncancel) rather than an anyio CancelScope: thousands of polls
    wait at once, and a cancel scope per poll would make every one of them heavier.
    """

    __slots__ = ("reason", "task")

    def __init__(self) -> None:
        self.task: asyncio.Task[object] | None = None
        self.reason: str | None = None  # "disconnect", "gone" or "closing"

    def end(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            if self.task is not None:
                self.task.cancel()

    def disconnected(self) -> None:
        self.end("disconnect")


class RelayMetrics:
    def __init__(self, services: Services) -> None:
        registry = services.metrics
        self.registrations = Gauge("relay_registrations", "Registrations in the database", registry=registry)
        self.pollers = Gauge("relay_pollers_waiting", "Polls held open by this process", registry=registry)
        # A plain count read at scrape time: Gauge.inc/dec take a lock on every held poll.
        self.waiting = 0
        self.pollers.set_function(lambda: self.waiting)
        self.held = Gauge(
            "relay_held_bytes", "Bytes of relayed requests and replies held by this process", registry=registry
        )
        self.requests = Counter("relay_requests", "Requests to public URLs by outcome", ["outcome"], registry=registry)
        self.latency = Histogram(
            "relay_latency_seconds",
            "Time from a request's arrival on a public URL to its reply",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=registry,
        )
        self._outcomes: dict[str, Counter] = {}

    def count(self, outcome: str) -> None:
        child = self._outcomes.get(outcome)
        if child is None:
            child = self._outcomes[outcome] = self.requests.labels(outcome)
        child.inc()


class Relay:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.settings = services.settings
        self.broker = services.broker
        solo = not services.broker.spans_processes  # one process: no relay.changed can be missed
        self.registry = Registry(services.sessions, services.settings, SOLO_CACHE_TTL if solo else CACHE_TTL)
        self.dispatcher = Dispatcher(services.broker, services.settings)
        self.metrics = RelayMetrics(services)
        self.urls = RelayUrls(services.settings)
        self.mailbox = Mailbox(services.sessions, services.settings)
        self.inspector = Inspector(services.sessions, services.settings)
        settings = services.settings
        self.held = HeldBytes(
            settings.max_queued_bytes_per_name, settings.max_queued_bytes, settings.unavailable_timeout
        )
        self.metrics.held.set_function(lambda: self.held.held)
        # A body (or a reply) that could never be held is refused as too large (413), not as busy.
        bound = min(self.held.per_name, self.held.total)
        self.body_limit = int(min(settings.max_body_size, bound))
        self.reply_limit = int(min(settings.max_body_size * settings.max_pipeline, bound))
        self._parked: dict[str, set[Park]] = {}
        self.ptth = PtthPool(self)  # PTTH connections open here (relay.ptth): pollers too
        self._active: set[str] = set()
        # Names whose lease this process extended, and when (wall clock): see sweep().
        self._touched: dict[str, float] = {}
        self._closing = False
        self._next_prune = 0.0  # monotonic time of the next mailbox and inspector prune

    # URLs -----------------------------------------------------------------------------------------
    def public_url(self, name: str) -> str:
        return self.urls.public_url(name)

    def request_url(self, cap: str) -> str:
        return self.urls.request_url(cap)

    def private_url(self, reg: Reg) -> str:
        return self.urls.private_url(private_cap(reg))

    def inspector_url(self, reg: Reg) -> str:
        return self.urls.inspector_url(private_cap(reg))

    def links(self, reg: Reg) -> list[tuple[str, str]]:
        """The headers of a 2xx registration response (spec "Registration")."""
        return [
            ("Link", f'<{self.request_url(self.registry.issue_request_cap(reg))}>; rel="first"'),
            ("Link", f'<{self.public_url(reg.name)}>; rel="related"'),
            ("Location", self.private_url(reg)),
        ]

    # Registrations --------------------------------------------------------------------------------
    async def register(
        self,
        name: str | None,
        token: str | None,
        lease: str | None,
        client: str | None = None,
        mailbox: bool | None = None,
    ) -> tuple[Reg, bool]:
        """Create or refresh a registration; ``client`` is who creates it (None: exempt from limits);
        ``mailbox``: mailbox mode on or off (None: as it was)."""
        reg, created = await self.registry.register(name, token, lease, client, mailbox)
        if created:
            await self.broker.publish(CHANGED_CHANNEL, b"changed " + reg.name.encode())
        logger.info("relay registration %s %s", reg.name, "created" if created else "refreshed")
        return reg, created

    async def registration(self, cap: str) -> Reg:
        return await self.registry.by_private_cap(cap)

    async def reconfigure(self, cap: str, token: str | None, lease: str | None) -> Reg:
        reg = await self.registry.reconfigure(await self.registration(cap), token, lease)
        await self.broker.publish(CHANGED_CHANNEL, b"changed " + reg.name.encode())
        return reg

    async def delete(self, cap: str) -> None:
        """DELETE on the private URL: polls in flight end with 410; delivered requests still get replies."""
        reg = await self.registration(cap)
        if not await self.registry.delete(reg):
            raise NotFound("no such registration")
        await self._deleted(reg.name)
        await self.broker.publish(CHANGED_CHANNEL, b"deleted " + reg.name.encode())
        logger.info("relay registration %s deleted", reg.name)

    async def _deleted(self, name: str) -> None:
        self.registry.forget(name)
        self._touched.pop(name, None)
        for park in list(self._parked.get(name, ())):
            park.end("gone")
        self.ptth.gone(name)
        await self.broker.delete(seen_key(name))
        await self.dispatcher.drain(name, Withdrawn())
        try:
            await self.mailbox.forget(name)
            await self.inspector.forget(name)
        except SQLAlchemyError:
            # The registration is gone: its rows are invisible already (they name it) and the
            # sweeper's prune deletes them.
            logger.warning("could not delete the stored requests of %s yet", name, exc_info=True)

    async def status(self) -> dict[str, object]:
        """The gateway's state (``GET`` on the gateway URL): no tokens, no private or request URLs."""
        count, regs = await self.registry.listing()
        now = time.time()
        return {
            "registrations": count,
            "pollers_waiting_here": sum(len(s) for s in self._parked.values()),
            "names": [
                {
                    "name": r.name,
                    "public_url": self.public_url(r.name),
                    "lease": int(r.lease_seconds),
                    "expires_in": max(0, int(r.expires_at - now)),
                    "pollers_waiting_here": len(self._parked.get(r.name, ())),
                }
                for r in regs
            ],
        }

    # Polling --------------------------------------------------------------------------------------
    async def _request_reg(self, cap: str) -> Reg:
        reg = await self.registry.by_request_cap(cap)
        if reg is None:
            raise NotFound("no such request URL")
        return reg

    async def poll(self, cap: str, kind: str, park: Park, watch: Callable[[], object] | None = None) -> Delivery | None:
        """GET on a request URL: the delivery (200) or None (204: poll timeout, shutdown, disconnect).

        A URL already bound to a delivery gives it again; after a 204 the same URL stays usable.
        ``watch()`` is called only when the poll has to wait (the endpoint then starts watching for
        a disconnect): a busy application whose queue is not empty is served without it.
        """
        reg = await self._request_reg(cap)
        name = reg.name
        existing = await self.dispatcher.bound(cap)
        if existing is not None:
            return existing
        if self._closing:
            return None
        await self.dispatcher.mark_polling(name, self.public_url(name))
        self._active.add(name)
        max_items = self.settings.max_pipeline if kind == envelope.PIPELINE else 1
        if reg.mailbox:
            raw_items = await self._take_mail(reg, park, max_items, watch)
        else:
            raw_items = await self.dispatcher.take(name, 0, max_items)
            if not raw_items:
                raw_items = await self._park(name, park, max_items, watch)
        if park.reason in ("gone", "disconnect"):
            if raw_items:
                await self.dispatcher.put_back(name, raw_items)
            if park.reason == "gone":
                raise Gone()
            await self.dispatcher.mark_gone(name)
            return None
        if not raw_items:
            return None
        delivery = Delivery(self.registry.issue_request_cap(reg), kind, [Item.unpack(r) for r in raw_items])
        return await self.dispatcher.bind(name, cap, delivery, raw_items)

    async def _take_mail(self, reg: Reg, park: Park, max_items: int, watch: Callable[[], object] | None) -> list[bytes]:
        """A mailbox name's poll: stored mail first (oldest first), then the live queue, where a
        nudge (relay.mailbox) stands for mail stored while this poll waited."""
        raw_items = await self.mailbox.claim(reg, max_items)
        deadline = time.monotonic() + self.settings.poll_timeout
        while not raw_items and park.reason is None:
            raw_items = await self.dispatcher.take(reg.name, 0, max_items)
            if not raw_items:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                raw_items = await self._park(reg.name, park, max_items, watch, remaining)
                watch = None  # the disconnect watcher runs once it started
            if NUDGE in raw_items:
                live = [raw for raw in raw_items if raw != NUDGE]
                mail = await self.mailbox.claim(reg, max_items - len(live)) if len(live) < max_items else []
                raw_items = mail + live
        return raw_items

    async def _park(
        self,
        name: str,
        park: Park,
        max_items: int,
        watch: Callable[[], object] | None,
        timeout: float | None = None,
    ) -> list[bytes]:
        """Wait for queued requests; a DELETE, a disconnect or shutdown ends the wait (park.reason)."""
        timeout = self.settings.poll_timeout if timeout is None else timeout
        if watch is not None:
            watch()
        parked = self._parked.setdefault(name, set())
        parked.add(park)
        self.metrics.waiting += 1
        raw_items: list[bytes] = []
        try:
            if park.reason is None:
                park.task = asyncio.current_task()
                try:
                    if max_items == 1:  # one frame less per held poll than going through take()
                        raw = await self.broker.pop(queue_key(name), timeout)
                        raw_items = [raw] if raw is not None else []
                    else:
                        raw_items = await self.dispatcher.take(name, timeout, max_items)
                except asyncio.CancelledError:
                    if park.task is None or park.reason is None:
                        raise  # not ours: the server is cancelling this request
                    park.task.uncancel()
                # No await between the wait and this line, so end() cannot cancel anything later.
                park.task = None
        finally:
            park.task = None
            parked.discard(park)
            if not parked:
                self._parked.pop(name, None)
            self.metrics.waiting -= 1
        return raw_items

    async def undeliver(self, cap: str, delivery: Delivery) -> None:
        """The poller went away after its delivery was bound: put the requests back in the queue."""
        name = cap_name(cap, private=False)
        if name:
            await self.dispatcher.unbind(name, cap, [item.pack() for item in delivery.items])

    def polled_here(self, name: str) -> bool:
        """Whether a poll of ``name`` waits in this process."""
        return name in self._parked

    # Replies --------------------------------------------------------------------------------------
    async def claim(self, cap: str) -> Delivery:
        """The delivery a reply POSTed to ``cap`` answers, taken for it; NotFound when none waits.

        Called before the reply's body is read: a POST to a made-up request URL is answered 404
        without its body costing any memory.
        """
        return await self.dispatcher.claim(cap)

    async def unclaim(self, cap: str, delivery: Delivery) -> None:
        """The reply to a claimed delivery did not arrive whole: it may be posted again."""
        await self.dispatcher.restore(cap, delivery)

    async def refuse(self, delivery: Delivery) -> None:
        """The reply to a claimed delivery is too large to be relayed: its requesters get 502."""
        for item in delivery.items:
            await self._fail(item, BadReply("the application's reply was too large"))

    async def _fail(self, item: Item, error: RequesterError) -> None:
        row = mail_id(item.id)
        if row is None:
            await self.dispatcher.fail(item, error)
        else:
            await self.mailbox.fail(row, error.status, error.reason)

    async def reply(self, cap: str, delivery: Delivery, body: bytes, content_type: str | None) -> None:
        """POST on a request URL: relay the response(s) to the requester(s) of the claimed
        ``delivery`` (spec "Replying")."""
        try:
            methods = [envelope.request_method(item.message) for item in delivery.items]
            responses = envelope.parse_reply(body, content_type, methods)
            # Written out before any is relayed: a header value parsing lets through (a lone CR)
            # fails here, and then the whole reply is refused, never half relayed or a 500.
            packed = [serialize_response(r, m) for r, m in zip(responses, methods, strict=True)]
        except (InvalidInput, WireError) as exc:
            for item in delivery.items:
                await self._fail(item, BadReply())
            if isinstance(exc, InvalidInput):
                raise
            raise InvalidInput(f"invalid reply: {exc}") from None
        for item, response in zip(delivery.items, packed, strict=True):
            row = mail_id(item.id)
            if row is None:
                await self.dispatcher.answer(item, response)
            else:
                await self.mailbox.answer(row, response)
        name = cap_name(cap, private=False)
        if name:
            await self.broker.set(seen_key(name), b"1", self.settings.unavailable_timeout, nx=True)

    # Requesters -----------------------------------------------------------------------------------
    async def lookup(self, name: str) -> Reg | None:
        return await self.registry.lookup(name)

    async def relay(self, name: str, item_id: str, raw: bytes) -> bytes | Response:
        """Queue the packed request ``raw`` for ``name``'s pollers and wait for its reply (serialized;
        parsed when a PTTH connection of this process answered it)."""
        if self.ptth.count:  # a PTTH connection of the name here may take it directly (relay.ptth)
            reply = await self.ptth.direct(name, raw)
            if reply is not None:
                return reply
        return await self.dispatcher.relay(name, item_id, raw)

    async def mail(
        self, reg: Reg, raw: bytes, live: Callable[[], Awaitable[bytes | Response]]
    ) -> tuple[bytes | Response, bool]:
        """A request to mailbox name ``reg``: relayed ``live()`` while a poller is there and no stored
        mail waits before it, else stored (relay.mailbox). Returns the reply and whether it was stored
        (the reply is then the 202 with its Location)."""
        name = reg.name
        if await self._seen(name) and not await self.mailbox.backlog(reg):
            try:
                return await live(), False
            except NoPoller:
                pass  # withdrawn from the queue, so no poller has it: store it instead
            except NoReply:
                # A poller took it and never answered: most often one that was going away (its
                # connection closed as the request was handed over). Stored, it reaches the
                # application when it is back, perhaps a second time (at least once).
                pass
        cap = await self.mailbox.store(reg, Item.unpack(raw))
        # After the commit: a poll that began before it may be waiting on the queue already.
        if await self._seen(name):
            try:
                await self.broker.push(queue_key(name), NUDGE)
            except (BrokerUnavailable, BrokerClosed):
                logger.warning("could not nudge the pollers of %s; they find the mail at their next poll", name)
        return accepted(self.urls.mailbox_url(cap)), True

    async def _seen(self, name: str) -> bool:
        """Whether a poller is around; a broker that cannot say counts as none (the mail is stored)."""
        try:
            return await self.broker.get(seen_key(name)) is not None
        except (BrokerUnavailable, BrokerClosed):
            return False

    async def fetch_mail(self, cap: str) -> bytes | None:
        """``GET`` on a mailbox Location: b"" while pending, the stored response, or None (unknown)."""
        return await self.mailbox.fetch(cap)

    # Lifecycle ------------------------------------------------------------------------------------
    @property
    def sweep_interval(self) -> float:
        return max(0.05, min(5.0, self.settings.lease_min / 4))

    async def sweep(self, now: float | None = None) -> list[str]:
        """Extend the leases of names polled here, then delete dormant registrations."""
        active = self._active | set(self._parked) | self.ptth.names()
        self._active = set()
        wall = time.time() if now is None else now
        due, dormant = self._due_for_touch(active, wall)
        try:
            await self.registry.touch(due, now)
        except BaseException:
            self._active |= active  # the next sweep tries again
            raise
        for name in dormant:
            del self._touched[name]
        for name in due - dormant:
            self._touched[name] = wall
        deleted = await self.registry.sweep(now)
        for name in deleted:
            await self._deleted(name)
            await self.broker.publish(CHANGED_CHANNEL, b"deleted " + name.encode())
            logger.info("relay registration %s expired", name)
        count, _ = await self.registry.listing(limit=0)
        self.metrics.registrations.set(count)
        if time.monotonic() >= self._next_prune:
            self._next_prune = time.monotonic() + PRUNE_INTERVAL
            await self.mailbox.prune(now)
            await self.inspector.prune()
        return deleted

    def _due_for_touch(self, active: set[str], now: float) -> tuple[set[str], set[str]]:
        """The names whose lease to extend now, and which of them are no longer polled.

        A lease counts from the name's last poll. Rewriting every polled name's row at every sweep
        would hold SQLite's write lock for long with thousands of pollers, while the outbox needs
        it. So a name still being polled is extended once a quarter of its lease has gone by since
        this process last did it, and its row always has most of a lease left; a name no longer
        polled gets one last extension at the sweep that finds it gone, counted from then.
        """
        touched = self._touched
        dormant = {name for name in touched if name not in active}
        due = set(dormant)
        for name in active:
            last = touched.get(name)
            lease = self.registry.cached_lease(name)
            if last is None or lease is None or now - last >= lease / 4:
                due.add(name)
        return due, dormant

    async def _sweeper(self) -> None:
        while True:
            try:
                # Shielded: a database call cancelled half-way leaves aiosqlite hanging at shutdown.
                with anyio.CancelScope(shield=True):
                    await self.sweep()
            except Exception as exc:
                if db.unavailable(exc):  # an outage, not a bug: one line per sweep while it lasts
                    logger.warning("relay lease sweep waits for the database (%s)", getattr(exc, "orig", None) or exc)
                else:
                    logger.warning("relay lease sweep failed", exc_info=True)
            await anyio.sleep(self.sweep_interval)

    async def _listen(self) -> None:
        """Other processes' registration changes: drop cached rows, end polls of deleted names."""
        while True:
            try:
                async with self.broker.subscribe(CHANGED_CHANNEL) as sub:
                    async for message in sub:
                        what, _, raw = message.partition(b" ")
                        name = raw.decode("ascii", "replace")
                        self.registry.forget(name)
                        if what == b"deleted":
                            for park in list(self._parked.get(name, ())):
                                park.end("gone")
                            self.ptth.gone(name)
            except Exception:
                logger.warning("relay change listener failed; resubscribing", exc_info=True)
                await anyio.sleep(1)

    async def run(self) -> None:
        """The relay's background loops, each supervised: one that fails is logged and started
        again (:func:`reversehub.core.supervise.supervised`), never the end of the others."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(supervised, "the relay's lease sweeper", self._sweeper)
            tg.start_soon(supervised, "the relay's change listener", self._listen)
            tg.start_soon(supervised, "the relay's requester clock", self.dispatcher.run)
            tg.start_soon(supervised, "the relay's inspector", self.inspector.run)

    @property
    def closing(self) -> bool:
        """True once :meth:`aclose` began."""
        return self._closing

    async def aclose(self) -> None:
        """Stop taking polls and end the held ones with 204 at once (graceful shutdown drains)."""
        self._closing = True
        for parked in list(self._parked.values()):
            for park in list(parked):
                park.end("closing")
        await self.ptth.aclose()


__all__ = ["Park", "Relay", "RelayError"]
