"""A WebSub subscriber that needs no public address: its callback URL is a relay name it polls.

::

    def show(update: Update) -> None:
        print(update.topic, update.body)

    with Subscriber("http://127.0.0.1:8000/topics/news", show, hub="http://127.0.0.1:8000/hub"):
        input("subscribed; press Enter to stop\\n")

Two faces, as httpx has ``Client`` and ``AsyncClient``: :class:`AsyncSubscriber` is the one
implementation, for coroutines (``async with AsyncSubscriber(...)``, ``await sub.start()``,
``await sub.stop()``); :class:`Subscriber` is its blocking twin (``with Subscriber(...)``,
``sub.start()``, ``sub.stop()``), which runs an ``AsyncSubscriber`` on an event loop in a thread of
its own, so it works the same whether or not the caller has a loop running.

What it does (W3C WebSub):
- discovery (section 4) when ``hub`` is None: the topic's ``Link rel="hub"``/``rel="self"``;
- subscription (5.1): claims a relay name, sends its public URL as ``hub.callback`` with a
  ``hub.secret`` (generated when none is given) and waits for the hub's verification (5.3), which it
  answers only for the topic and mode it asked for; a ``denied`` notice (5.2) fails ``start()``.
  It counts as subscribed only once the relay accepted its answer to the verification (202): until
  then the hub has not got the echoed challenge and may never store the subscription (a server
  that stops in between, say). An answer the relay did not accept fails ``start()`` with
  :class:`SubscriptionError`; a renewal or a re-subscription in the background is tried again;
- content distribution (7): checks ``X-Hub-Signature`` (sha1/sha256/sha384/sha512) and ignores
  forged bodies with a 2xx (as 7 allows, so forgers learn nothing), drops duplicates by the Standard
  Webhooks ``webhook-id``, calls the callback, and answers 204, or 500 when the callback raised, so
  the hub retries later;
- leases: renews at ``renew_fraction`` of the granted ``hub.lease_seconds``; re-subscribes after the
  relay lost its registration; polls through network errors with backoff;
- order (reversehub's ``X-Hub-Sequence``): updates reach the callback in sequence order, each once;
  a gap is filled from ``/hub/replay`` and what the hub no longer holds is reported to ``on_gap``
  (:mod:`clients.sequence`);
- durability, with ``state=PATH`` (``docs/subscribers.md``): the relay name, its token, the secret,
  the callback and the last sequence number handled are kept in PATH (:mod:`clients.state`), so a
  subscriber started again with it re-attaches to the same name and subscription and receives what
  the hub kept meanwhile. ``stop()`` then only detaches; ``unsubscribe()`` ends the subscription.
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import os
import secrets
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from types import TracebackType
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from clients import state as state_file
from clients._links import find_link
from clients._sync import LoopThread
from clients.discovery import discover
from clients.endpoint import (
    CONNECTED,
    RECONNECTING,
    TRANSPORTS,
    Endpoint,
    TransportChoice,
    backoff_sleep,
    random_name,
)
from clients.errors import (
    ClientError,
    ClosedError,
    MissedUpdates,
    OwnershipError,
    SubscriptionError,
    UnreachableError,
    server_hint,
    unreachable,
)
from clients.ownership import Owner
from clients.sequence import Sequencer
from clients.state import SubscriberState
from clients.update import Update
from relay.wire import HttpRequest, HttpResponse

logger = logging.getLogger(__name__)

Callback = Callable[[Update], "Awaitable[None] | None"]
GapCallback = Callable[[int, "int | None"], "Awaitable[None] | None"]

SIGNATURE_ALGORITHMS = {"sha1", "sha256", "sha384", "sha512"}
SEEN_DELIVERIES = 10_000  # how many delivery ids we remember to drop duplicates
# The relay-name lease a durable subscriber asks for (the relay clamps it to its maximum): the name
# is its callback, so it must outlive the time the subscriber is away; a lapsed name could be
# claimed by someone else, who would then receive the deliveries the hub keeps sending it.
DURABLE_NAME_LEASE = 30 * 24 * 3600

# Subscriber states, reported to ``on_state`` (besides the endpoint's ``connected``/``reconnecting``,
# and its transport, ``ptth``/``long-poll``/``ptth+long-poll``, whenever that changes).
DISCOVERING = "discovering"
SUBSCRIBING = "subscribing"
SUBSCRIBED = "subscribed"
RESUBSCRIBING = "resubscribing"
DENIED = "denied"
STOPPED = "stopped"


def relay_for(hub: str) -> str:
    """The relay of a reversehub hub: ``http://host:8000/hub`` -> ``http://host:8000/reversehttp``."""
    return urljoin(hub, "reversehttp")


def signature_ok(secret: bytes, header: str | None, body: bytes) -> bool:
    """``X-Hub-Signature: <algorithm>=<hex HMAC of the body>`` (WebSub 7.1)."""
    if not header:
        return False
    algorithm, _, digest = header.strip().partition("=")
    algorithm = algorithm.lower()
    if algorithm not in SIGNATURE_ALGORITHMS:
        return False
    expected = hmac.new(secret, body, algorithm).hexdigest()
    return hmac.compare_digest(expected, digest.strip().lower())


def _path_and_query(target: str) -> tuple[str, str]:
    """A request target's path and query (origin form, or absolute form from a proxy)."""
    if target.startswith(("http://", "https://")):
        parts = urlsplit(target)
        return parts.path, parts.query
    path, _, query = target.partition("?")
    return path, query


def _text(status: int, body: str = "") -> HttpResponse:
    return HttpResponse(status, [("content-type", "text/plain")], body.encode())


class AsyncSubscriber:
    """Subscribe to ``topic`` and call ``callback(update)`` for every delivery. See the module docstring.

    ``state``: a file that makes the subscriber durable (``docs/subscribers.md``): created at the
    first start, re-attached to at every later one, deleted by :meth:`unsubscribe`.
    ``on_gap(first, last)`` (sync or async) hears of updates the hub no longer holds, in their place
    among the updates (``last`` None: how many is unknown); each report is also logged and kept in
    :attr:`missed`. ``gap_wait``: seconds without any delivery before the hub is asked about a gap
    again.
    ``transport`` and ``verify`` are :class:`~clients.Endpoint`'s: ``"auto"`` (default) receives over
    PTTH where the relay offers it and long-polls elsewhere; an httpx transport carries every
    request (long-polling). :attr:`transport` then says which is in use (also in the state file).
    """

    def __init__(
        self,
        topic: str,
        callback: Callback,
        *,
        hub: str | None = None,
        relay: str | None = None,
        secret: str | None = None,
        lease_seconds: int | None = None,
        on_state: Callable[[str], None] | None = None,
        pollers: int = 2,
        transport: TransportChoice | httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        verify_timeout: float = 30.0,
        renew_fraction: float = 0.8,
        backoff: tuple[float, float] = (0.1, 30.0),
        poll_read_timeout: float = 120.0,
        state: str | os.PathLike[str] | None = None,
        on_gap: GapCallback | None = None,
        gap_wait: float = 2.0,
    ) -> None:
        if secret is not None and len(secret.encode()) >= 200:
            raise ValueError("hub.secret must be shorter than 200 bytes (WebSub 5.1)")
        self.topic = topic
        self.hub = hub
        self.relay = relay
        self.callback = callback
        self.secret = secret or secrets.token_hex(32)
        self.requested_lease = lease_seconds
        self.lease_seconds: int | None = None  # as granted by the hub's verification
        self.callback_url: str | None = None
        self.state = "new"
        self.transport: str | None = None  # ptth, long-poll, ptth+long-poll: what the relay name is served over
        self.rejected = 0  # deliveries ignored for a bad signature
        self.missed: list[MissedUpdates] = []  # gaps reported (see on_gap)
        self.state_path = os.fspath(state) if state is not None else None
        self._given_secret = secret
        self._on_gap = on_gap
        self._gap_wait = gap_wait
        self._saved: SubscriberState | None = None
        self._sequencer: Sequencer | None = None
        self._owner: Owner | None = None
        self._save_lock = threading.Lock()
        self._state_lock = state_file.StateLock(self.state_path) if self.state_path is not None else None
        self._on_state = on_state
        self._pollers = pollers
        self._transport = transport
        self._tls_verify = verify
        self._verify_timeout = verify_timeout
        self._renew_fraction = renew_fraction
        self._backoff = backoff
        self._poll_read_timeout = poll_read_timeout
        self._http: httpx.AsyncClient | None = None
        self._endpoint: Endpoint | None = None
        self._callback_path = ""
        self._pending: dict[str, asyncio.Future[int | None]] = {}
        # challenge -> (its pending request, the granted lease): echoed, waiting for the relay's 202
        self._echoing: dict[str, tuple[asyncio.Future[int | None], int | None]] = {}
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._subscribe_lock: asyncio.Lock | None = None
        self._callback_lock: asyncio.Lock | None = None
        self._lease_changed: asyncio.Event | None = None
        self._renew_at: float | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> AsyncSubscriber:
        """Subscribe; returns once the hub verified.

        "Verified" means the hub's verification GET arrived and the relay accepted our echo of its
        challenge, which it passes on to the hub. Raises :class:`SubscriptionError` when the hub
        refused, denied or did not verify within ``verify_timeout``, or when the echo did not reach
        the relay (the subscription was then not made: calling ``start()`` again is safe);
        :class:`UnreachableError` when the hub or relay does not answer (:class:`DiscoveryError`
        when the topic, fetched to find its hub, does not); :class:`RelayError` when the
        relay refused the name; :class:`ClosedError` once stopped; ``ValueError`` when the state
        file is not one, or was made for another topic, hub or secret.

        With ``state``, a state file that exists makes this a restart: the same relay name (with
        its token), secret and callback, and the sequence number to go on from.
        """
        if self._closed:
            raise ClosedError("subscriber was stopped")
        if self._started:
            return self
        self._subscribe_lock = asyncio.Lock()
        self._callback_lock = asyncio.Lock()
        self._lease_changed = asyncio.Event()
        http_transport = None if isinstance(self._transport, str) else self._transport
        self._http = httpx.AsyncClient(transport=http_transport, verify=self._tls_verify, timeout=httpx.Timeout(10.0))
        saved: SubscriberState | None = None
        try:
            if self._state_lock is not None and self.state_path is not None:
                self._state_lock.acquire()
                saved = await asyncio.to_thread(state_file.load, self.state_path)
            if saved is not None and self.hub is None and self.topic != saved.topic:
                # Named by the URL it was discovered from: the state has the hub's rel="self" one.
                self._set_state(DISCOVERING)
                found = await discover(self.topic, self._http)
                self.hub, self.topic = found.hub, found.topic
            if saved is not None:
                self._adopt(saved)
            elif self.hub is None:
                self._set_state(DISCOVERING)
                found = await discover(self.topic, self._http)
                self.hub, self.topic = found.hub, found.topic
            assert self.hub is not None
            last, expected = await self._resume_point(saved) if saved is not None else (0, 0)
            relay = saved.relay if saved is not None else self.relay or relay_for(self.hub)
            # Ready before the name is polled: what the hub queued comes at once, and a delivery
            # at or below `last` must already count as a duplicate.
            self._sequencer = Sequencer(
                last,
                self._handle,
                self._persist,
                self._report_gap,
                self._replay,
                self._pending_count,
                quiet=self._gap_wait,
            )
            if saved is not None:
                self._set_callback(saved.callback)
            self._endpoint = Endpoint(
                relay,
                self._on_request,
                name=saved.name if saved is not None else random_name("sub"),
                token=saved.token if saved is not None else secrets.token_urlsafe(24),
                lease=DURABLE_NAME_LEASE if self.state_path is not None else None,
                pollers=self._pollers,
                transport=self._transport,
                verify=self._tls_verify,
                poll_read_timeout=self._poll_read_timeout,
                backoff=self._backoff,
                on_state=self._endpoint_state,
                on_reregistered=self._resubscribe,
                on_replied=self._on_replied,
            )
            public_url = await self._endpoint.start()
            callback = urljoin(public_url, "websub")
            if callback != self.callback_url:
                self._set_callback(callback)
                if saved is not None:
                    # The hub keys a subscription by (topic, callback): a new callback is a new
                    # subscription, numbered from 1 again.
                    logger.warning("the relay gave this subscriber a new public URL: a new subscription")
                    await self._sequencer.reset(0)
                    expected = 0
            if self.state_path is not None:
                # Kept before subscribing: a crash from here on leaves a file that re-attaches.
                self._saved = SubscriberState(
                    hub=self.hub,
                    topic=self.topic,
                    relay=relay,
                    name=self._endpoint.name,
                    token=self._endpoint.token,
                    secret=self.secret,
                    callback=self.callback_url or "",
                    last_seq=self._sequencer.last,
                    lease_seconds=saved.lease_seconds if saved is not None else None,
                    lease_expires_at=saved.lease_expires_at if saved is not None else None,
                    transport=self.transport,
                    extra=saved.extra if saved is not None else {},
                )
                await asyncio.to_thread(self._save)
            self._set_state(SUBSCRIBING)
            await self._subscribe("subscribe")
        except BaseException:
            # A subscriber that resumed keeps its name and file; a new one leaves nothing behind.
            await self._teardown(release=saved is None)
            if saved is None and self._saved is not None and self.state_path is not None:
                await asyncio.to_thread(state_file.delete, self.state_path)
            if self._state_lock is not None:
                self._state_lock.release()
            raise
        self._started = True
        self._renewer = asyncio.create_task(self._renew_forever())
        self._set_state(SUBSCRIBED)
        if self.transport is not None:
            self._report(self.transport)  # held back until now (see _endpoint_state)
        self._sequencer.expect(expected)
        return self

    async def stop(self) -> None:
        """Without ``state``: unsubscribe and relinquish the relay name. With ``state``: detach only
        (the name, the subscription and the state file stay, and the hub keeps queueing).
        Idempotent; the subscriber cannot start again (a new one with the same state can)."""
        if self._closed:
            return
        self._closed = True
        await self._stop_renewing()
        durable = self.state_path is not None
        if self._started and not durable:
            try:
                await self._subscribe("unsubscribe")
            except (httpx.HTTPError, SubscriptionError, UnreachableError) as exc:
                logger.warning("unsubscribe from %s failed: %s", self.topic, exc)
        await self._teardown(release=not durable)
        if self._state_lock is not None:
            self._state_lock.release()
        self._set_state(STOPPED)

    async def unsubscribe(self) -> None:
        """End the subscription (``hub.mode=unsubscribe``), relinquish the relay name and delete the
        state file. A subscriber not started yet starts first (so a state file's subscription can be
        ended; updates still pending may reach the callback meanwhile). If the hub does not verify
        the unsubscription, this raises :class:`SubscriptionError` (or :class:`UnreachableError`) after
        detaching, and the name and the state file are kept, so it can be tried again."""
        if self._closed:
            raise ClosedError("subscriber was stopped")
        if not self._started:
            await self.start()
        self._closed = True
        await self._stop_renewing()
        try:
            await self._subscribe("unsubscribe")
        except BaseException:
            await self._teardown(release=False)
            if self._state_lock is not None:
                self._state_lock.release()
            self._set_state(STOPPED)
            raise
        await self._teardown(release=True)
        if self.state_path is not None:
            await asyncio.to_thread(state_file.delete, self.state_path)
        if self._state_lock is not None:
            self._state_lock.release(remove=True)
        self._set_state(STOPPED)

    async def __aenter__(self) -> AsyncSubscriber:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def last_seq(self) -> int:
        """The ``X-Hub-Sequence`` of the last update handled (0: none, or the hub numbers nothing)."""
        return self._sequencer.last if self._sequencer is not None else 0

    async def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)

    async def _teardown(self, release: bool = True) -> None:
        if self._sequencer is not None:
            await self._sequencer.aclose()
        if self._endpoint is not None:
            await self._endpoint.aclose(release=release)
        if self._http is not None:
            await self._http.aclose()

    # -- durability ----------------------------------------------------------------------------

    def _adopt(self, saved: SubscriberState) -> None:
        """Take the subscription's identity from its state file, refusing one made for another."""
        if self.topic != saved.topic:
            raise ValueError(f"{self.state_path} is the state of a subscription to {saved.topic}, not {self.topic}")
        if self.hub is not None and self.hub != saved.hub:
            raise ValueError(f"{self.state_path} is the state of a subscription at {saved.hub}, not {self.hub}")
        if self._given_secret is not None and self._given_secret != saved.secret:
            raise ValueError(f"{self.state_path} holds another hub.secret than the one given")
        self.hub, self.secret = saved.hub, saved.secret

    async def _resume_point(self, saved: SubscriberState) -> tuple[int, int]:
        """(the last sequence number handled, the highest the hub gave out): asked before the name is
        polled again, so no delivery is judged against a numbering that is no longer the hub's."""
        assert self._http is not None and self.hub is not None
        last = saved.last_seq
        try:
            status = await Owner(self._http, self.hub, self.topic, saved.callback, self.secret).status()
        except (ClientError, ValueError) as exc:
            logger.warning("the hub cannot tell what was published meanwhile (%s); resuming after %d", exc, last)
            return last, last
        if status is None:
            await self._report_gap(last + 1, None, "the hub no longer knows this subscription")
            return 0, 0
        if status.last_seq < last:
            logger.warning("the hub numbers this subscription from %d, below the state's %d", status.last_seq, last)
            return status.last_seq, status.last_seq
        if status.state != "active" or (status.expires_at is not None and status.expires_at <= time.time()):
            await self._report_gap(last + 1, None, "the subscription's lease ran out while the subscriber was away")
        return last, status.last_seq

    def _save(self) -> None:
        """Write the state file (in a worker thread; one write at a time, so none goes back in time)."""
        if self._saved is None or self.state_path is None:
            return
        with self._save_lock:
            state_file.save(self.state_path, self._saved)

    def _save_quietly(self) -> None:
        """:meth:`_save` for a change nobody waits for (the transport): a failure is only logged."""
        try:
            self._save()
        except OSError as exc:
            logger.warning("could not write %s: %s", self.state_path, exc)

    def _persist(self, seq: int) -> None:
        if self._saved is None or self.state_path is None:
            return
        with self._save_lock:
            self._saved.last_seq = seq
            state_file.save(self.state_path, self._saved)

    async def _replay(self, since: int) -> int:
        if self._owner is None:  # a gap seen before the callback URL is known: asked again later
            raise OwnershipError("not subscribed yet")
        return await self._owner.replay(since)

    async def _pending_count(self) -> int:
        if self._owner is None:
            raise OwnershipError("not subscribed yet")
        return await self._owner.pending()

    async def _report_gap(self, first: int, last: int | None, reason: str = "the hub no longer holds them") -> None:
        missed = MissedUpdates(first, last, reason)
        self.missed.append(missed)
        logger.warning("%s of %s", missed, self.topic)
        if self._on_gap is None:
            return
        try:
            result = self._on_gap(first, last)
            if inspect.isawaitable(result):
                await result
        except Exception:
            logger.exception("on_gap callback failed")

    def _set_callback(self, callback: str) -> None:
        self.callback_url = callback
        self._callback_path = urlsplit(callback).path
        assert self._http is not None and self.hub is not None
        self._owner = Owner(self._http, self.hub, self.topic, callback, self.secret)

    # -- subscription ------------------------------------------------------------------------

    async def _subscribe(self, mode: str) -> None:
        """Send a (un)subscription request and wait for the hub's verification of it (WebSub 5.1-5.3)."""
        assert self._subscribe_lock is not None and self._http is not None and self.hub is not None
        async with self._subscribe_lock:
            verified: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            # Registered before the request: a hub may verify before it answers.
            self._pending[mode] = verified
            try:
                data = {"hub.mode": mode, "hub.topic": self.topic, "hub.callback": self.callback_url or ""}
                if mode == "subscribe":
                    data["hub.secret"] = self.secret
                    if self.requested_lease is not None:
                        data["hub.lease_seconds"] = str(self.requested_lease)
                try:
                    response = await self._http.post(self.hub, data=data)
                except httpx.HTTPError as exc:
                    raise unreachable(self.hub, exc, server_hint(self.hub)) from exc
                if response.status_code >= 300:
                    reason = response.text.strip()[:200]
                    raise SubscriptionError(f"hub refused to {mode}: HTTP {response.status_code} {reason}")
                try:
                    lease = await asyncio.wait_for(verified, self._verify_timeout)
                except TimeoutError:
                    raise SubscriptionError(f"hub did not verify the {mode} within {self._verify_timeout}s") from None
            finally:
                self._pending.pop(mode, None)
                for challenge in [c for c, (future, _) in self._echoing.items() if future is verified]:
                    del self._echoing[challenge]
            if mode == "subscribe":
                self.lease_seconds = lease
                loop = asyncio.get_running_loop()
                self._renew_at = loop.time() + lease * self._renew_fraction if lease else None
                assert self._lease_changed is not None
                self._lease_changed.set()
                if self._saved is not None:
                    with self._save_lock:
                        self._saved.lease_seconds = lease
                        self._saved.lease_expires_at = time.time() + lease if lease else None
                    await asyncio.to_thread(self._save)

    async def _renew_forever(self) -> None:
        assert self._lease_changed is not None
        loop = asyncio.get_running_loop()
        while True:
            self._lease_changed.clear()
            if self._renew_at is None:
                await self._lease_changed.wait()
                continue
            wait = self._renew_at - loop.time()
            if wait > 0:
                try:
                    await asyncio.wait_for(self._lease_changed.wait(), wait)
                except TimeoutError:
                    pass
                continue
            await self._subscribe_until_done(SUBSCRIBED)

    async def _resubscribe(self) -> None:
        """The relay lost our registration (the public URL may even have changed): subscribe again."""
        assert self._endpoint is not None and self._endpoint.public_url is not None
        callback = urljoin(self._endpoint.public_url, "websub")
        if callback != self.callback_url:
            # A new callback is a new subscription for the hub, numbered from 1.
            self._set_callback(callback)
            if self._sequencer is not None:
                await self._sequencer.reset(0)
            if self._saved is not None:
                with self._save_lock:
                    self._saved.callback = callback
                await asyncio.to_thread(self._save)
        self._set_state(RESUBSCRIBING)
        await self._subscribe_until_done(SUBSCRIBED)

    async def _subscribe_until_done(self, state: str) -> None:
        delay = self._backoff[0]
        while True:
            try:
                await self._subscribe("subscribe")
            except (httpx.HTTPError, SubscriptionError, UnreachableError) as exc:
                logger.warning("renewing the subscription to %s failed (%s); retrying", self.topic, exc)
                self._set_state(RECONNECTING)
                delay = await backoff_sleep(delay, self._backoff[1])
                continue
            self._set_state(state)
            return

    # -- requests arriving over the relay ----------------------------------------------------

    async def _on_request(self, request: HttpRequest) -> HttpResponse:
        path, query = _path_and_query(request.target)
        if path != self._callback_path:
            return _text(404, "Not Found\n")
        if request.method == "GET":
            return self._verify(parse_qs(query))
        if request.method == "POST":
            return await self._deliver(request)
        return _text(405, "Method Not Allowed\n")

    def _verify(self, params: dict[str, list[str]]) -> HttpResponse:
        mode = params.get("hub.mode", [""])[0]
        topic = params.get("hub.topic", [""])[0]
        challenge = params.get("hub.challenge", [""])[0]
        if topic != self.topic:
            return _text(404, "unknown topic\n")
        if mode == "denied":
            reason = params.get("hub.reason", [""])[0]
            pending = self._pending.get("subscribe")
            if pending is not None and not pending.done():
                pending.set_exception(SubscriptionError(f"hub denied the subscription: {reason}".rstrip(": ")))
            else:
                logger.warning("hub cancelled the subscription to %s: %s", topic, reason)
                self._set_state(DENIED)
            return _text(200)
        pending = self._pending.get(mode)
        if pending is None or pending.done() or not challenge:
            # Only what we asked for: anyone can send us a verification, and echoing every
            # challenge would let them subscribe us to topics we never wanted (WebSub 5.3).
            return _text(404, "no such pending request\n")
        lease_param = params.get("hub.lease_seconds", [""])[0]
        # Not verified yet: only once the relay took this echo can the hub have it (_on_replied).
        self._echoing[challenge] = (pending, int(lease_param) if lease_param.isdigit() else None)
        return _text(200, challenge)

    def _on_replied(self, request: HttpRequest, accepted: bool) -> None:
        """The endpoint POSTed our answer to ``request``; ``accepted``: the relay took it (202)."""
        if request.method != "GET":
            return
        path, query = _path_and_query(request.target)
        challenge = parse_qs(query).get("hub.challenge", [""])[0]
        echoing = self._echoing.pop(challenge, None) if path == self._callback_path else None
        if echoing is None:
            return
        pending, lease = echoing
        if pending.done():
            return
        if accepted:
            pending.set_result(lease)
        else:
            pending.set_exception(
                SubscriptionError(
                    "the hub's verification came, but the relay did not take our answer to it "
                    "(so the hub may never store the subscription): not subscribed"
                )
            )

    async def _deliver(self, request: HttpRequest) -> HttpResponse:
        headers = httpx.Headers(request.headers)
        if not signature_ok(self.secret.encode(), headers.get("x-hub-signature"), request.body):
            self.rejected += 1
            logger.warning("ignored a delivery with a missing or wrong X-Hub-Signature")
            return _text(202)
        delivery_id = headers.get("webhook-id")
        if delivery_id is not None and delivery_id in self._seen:
            return _text(204)
        update = Update(
            topic=find_link(headers.get_list("link"), "self") or self.topic,
            body=request.body,
            content_type=headers.get("content-type", ""),
            headers=headers,
        )
        seq = update.seq
        try:
            if seq is not None and self._sequencer is not None:
                # In sequence order, each once, gaps filled (clients.sequence); the state file's
                # last_seq is written before this delivery is acknowledged.
                await self._sequencer.offer(seq, update)
            else:
                assert self._callback_lock is not None
                async with self._callback_lock:  # one callback at a time, in the order deliveries arrive
                    if delivery_id is not None and delivery_id in self._seen:
                        return _text(204)
                    await self._handle(update)
        except Exception:
            logger.exception("subscriber callback failed; the hub will retry this delivery")
            return _text(500, "callback failed\n")
        return _text(204)

    async def _handle(self, update: Update) -> None:
        await self._call(update)
        if update.id is not None:
            self._seen[update.id] = None
            while len(self._seen) > SEEN_DELIVERIES:
                self._seen.popitem(last=False)

    async def _call(self, update: Update) -> None:
        if inspect.iscoroutinefunction(self.callback) or inspect.iscoroutinefunction(
            getattr(self.callback, "__call__", None)  # noqa: B004 (an async __call__ method)
        ):
            await self.callback(update)  # type: ignore[misc]
            return
        # Sync callbacks run in a worker thread, as Starlette runs sync endpoints, so a slow one
        # does not stall polling.
        result = await asyncio.to_thread(self.callback, update)
        if inspect.isawaitable(result):
            await result

    # -- state -------------------------------------------------------------------------------

    def _endpoint_state(self, state: str) -> None:
        if state in (CONNECTED, RECONNECTING):
            self._set_state(state)
        elif state in TRANSPORTS:
            self.transport = state
            if self._saved is not None and self._saved.transport != state:
                self._saved.transport = state
                asyncio.get_running_loop().run_in_executor(None, self._save_quietly)
            if self._started:  # before, a start() that fails would report how it was not reached
                self._report(state)

    def _set_state(self, state: str) -> None:
        self.state = state
        self._report(state)

    def _report(self, state: str) -> None:
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                logger.exception("on_state callback failed")


class Subscriber:
    """The blocking twin of :class:`AsyncSubscriber`: ``with Subscriber(...)``, ``start()``, ``stop()``.

    It runs an :class:`AsyncSubscriber` on an event loop in a daemon thread of its own, so its
    methods block and never return an awaitable, whether or not the calling thread runs a loop
    (in a coroutine, prefer :class:`AsyncSubscriber`: these calls block that loop while they wait).
    Sync callbacks run in a worker thread of that loop, async ones on it. The arguments are
    :class:`AsyncSubscriber`'s.
    """

    def __init__(
        self,
        topic: str,
        callback: Callback,
        *,
        hub: str | None = None,
        relay: str | None = None,
        secret: str | None = None,
        lease_seconds: int | None = None,
        on_state: Callable[[str], None] | None = None,
        pollers: int = 2,
        transport: TransportChoice | httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        verify_timeout: float = 30.0,
        renew_fraction: float = 0.8,
        backoff: tuple[float, float] = (0.1, 30.0),
        poll_read_timeout: float = 120.0,
        state: str | os.PathLike[str] | None = None,
        on_gap: GapCallback | None = None,
        gap_wait: float = 2.0,
    ) -> None:
        self._subscriber = AsyncSubscriber(
            topic,
            callback,
            hub=hub,
            relay=relay,
            secret=secret,
            lease_seconds=lease_seconds,
            on_state=on_state,
            pollers=pollers,
            transport=transport,
            verify=verify,
            verify_timeout=verify_timeout,
            renew_fraction=renew_fraction,
            backoff=backoff,
            poll_read_timeout=poll_read_timeout,
            state=state,
            on_gap=on_gap,
            gap_wait=gap_wait,
        )
        self._thread: LoopThread | None = None
        self._lock = threading.Lock()  # one start() or stop() at a time: each owns the loop thread

    def start(self) -> Subscriber:
        """Subscribe; returns once the hub verified (see :meth:`AsyncSubscriber.start` for the errors)."""
        with self._lock:
            if self._thread is not None:
                return self
            thread = LoopThread()
            try:
                thread.run(self._subscriber.start())
            except BaseException:
                thread.close()
                raise
            self._thread = thread
            return self

    def stop(self) -> None:
        """Unsubscribe and relinquish the relay name (with ``state``: detach only, see
        :meth:`AsyncSubscriber.stop`) and end the loop thread. Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is None:
                return
            try:
                thread.run(self._subscriber.stop())
            finally:
                thread.close()

    def unsubscribe(self) -> None:
        """End the subscription, relinquish the name, delete the state file (see
        :meth:`AsyncSubscriber.unsubscribe`) and end the loop thread."""
        with self._lock:
            thread, self._thread = self._thread, None
            thread = thread or LoopThread()
            try:
                thread.run(self._subscriber.unsubscribe())
            finally:
                thread.close()

    def __enter__(self) -> Subscriber:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Read-only views of the subscriber's state; see AsyncSubscriber.

    @property
    def topic(self) -> str:
        """The topic URL (the one the hub advertised as ``rel="self"`` after discovery)."""
        return self._subscriber.topic

    @property
    def hub(self) -> str | None:
        """The hub URL, given or discovered."""
        return self._subscriber.hub

    @property
    def secret(self) -> str:
        """The ``hub.secret`` deliveries are signed with."""
        return self._subscriber.secret

    @property
    def callback_url(self) -> str | None:
        """The relay URL given to the hub as ``hub.callback``."""
        return self._subscriber.callback_url

    @property
    def lease_seconds(self) -> int | None:
        """The lease the hub granted in its verification."""
        return self._subscriber.lease_seconds

    @property
    def state(self) -> str:
        """The latest state, as reported to ``on_state``."""
        return self._subscriber.state

    @property
    def transport(self) -> str | None:
        """What the relay name is served over now: ``ptth``, ``long-poll`` or ``ptth+long-poll``."""
        return self._subscriber.transport

    @property
    def last_seq(self) -> int:
        """The ``X-Hub-Sequence`` of the last update handled."""
        return self._subscriber.last_seq

    @property
    def missed(self) -> list[MissedUpdates]:
        """The gaps reported so far (see ``on_gap``)."""
        return self._subscriber.missed

    @property
    def rejected(self) -> int:
        """How many deliveries were ignored for a missing or wrong signature."""
        return self._subscriber.rejected
