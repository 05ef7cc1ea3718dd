"""Subscribing and unsubscribing: intake, intent verification, leases (W3C WebSub 5.1-5.3).

The hub answers 202 as soon as a request is valid, then verifies intent by ``GET`` on the callback
(its own query parameters kept) with ``hub.mode``, ``hub.topic``, ``hub.challenge`` and, for a
subscribe, ``hub.lease_seconds``. Only a 2xx whose body is exactly the challenge counts (5.3.1).
Nothing changes until then: a failed re-subscribe leaves the old subscription (lease, secret) as
it was, and a failed unsubscribe leaves it active. The answer to the request never depends on how
verification turns out.

Verification is transient work of the process that took the request: if that process dies first,
the subscriber sees no verification and asks again (5.1: subscribers retry).

A graceful shutdown (:meth:`Verifier.aclose`, then cancellation) keeps one promise: a callback that
echoed its challenge with a 2xx gets its subscription stored. That subscriber counts itself
subscribed (5.3.1) and will hear nothing more, so the step from the echo to the commit is drained
and shielded from cancellation (bounded by :data:`reversehub.core.settings.SHUTDOWN_GRACE`). Everything before
it may be abandoned, which changes nothing (5.1: a failed verification leaves the state as it was)
and which the subscriber sees as a verification that never came: requests that arrive while the hub
closes get 503; verifications whose GET has not gone out are dropped at once; a GET in flight keeps
going while the server finishes its requests (an echo can still arrive through our own relay) and
is dropped only when the hub is finally cancelled.

A database that cannot take the write after an echo (full, read-only, down) only delays it, for
the same reason: the write is tried again until it commits (:func:`hub.activations.until_stored`).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import string
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import anyio
import httpx
from starlette.datastructures import FormData

from hub import store
from hub.activations import Activations, until_stored
from hub.challenge import Unanswered, ask, with_params
from hub.errors import BadRequest, Busy, URLRefused
from hub.fairness import HostSlots, Slots, netloc
from hub.grace import Grace
from hub.models import SubscriptionState
from hub.netguard import NetGuard
from reversehub.core import policy
from reversehub.core.outbound import OutboundError
from reversehub.core.services import Services

logger = logging.getLogger(__name__)

MAX_SECRET_BYTES = 200  # 5.1: hub.secret MUST be less than 200 bytes
MAX_URL_LENGTH = 2048


@dataclass(frozen=True)
class SubscriptionRequest:
    mode: str  # subscribe | unsubscribe
    topic: str
    callback: str
    lease_seconds: int | None = None
    secret: str | None = None
    # Who asked (reversehub.core.limits.client_key), for the per-client share of the per-host cap.
    client: str | None = None


def check_url(value: str | None, name: str) -> str:
    """An absolute http(s) URL without a fragment, or :class:`BadRequest` naming the parameter."""
    if not value:
        raise BadRequest(f"{name} is required")
    if len(value) > MAX_URL_LENGTH:
        raise BadRequest(f"{name} is longer than {MAX_URL_LENGTH} characters")
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        raise BadRequest(f"{name} is not a valid URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise BadRequest(f"{name} must be an absolute http or https URL")
    if url.fragment:
        raise BadRequest(f"{name} must not have a fragment")
    return value


_DOT_SEGMENTS = frozenset({".", ".."})
# RFC 3986 2.2 and 2.3 (reserved, unreserved) and "%": anything else a client would re-encode.
_URI_CHARACTERS = frozenset(string.ascii_letters + string.digits + "-._~:/?#[]@!$&'()*+,;=%")


def check_callback(value: str | None) -> str:
    """:func:`check_url` for ``hub.callback``, which must also have exactly one reading.

    The verification GET and the delivery POST must reach the same resource, or one party could
    consent for another's URL (verified by ``/relay/attacker/x``, delivered to ``/relay/victim/``).
    An HTTP client may remove dot segments (RFC 3986 5.2.4) or re-encode characters where a server
    takes the path as written, so callbacks whose path has a dot segment (``.``/``..``, percent-
    encoded or not), or a character that is not a URI character (a backslash, a space, non-ASCII), are
    refused.
    """
    callback = check_url(value, "hub.callback")
    if not _URI_CHARACTERS.issuperset(callback):
        raise BadRequest("hub.callback may hold only URI characters (RFC 3986 2): percent-encode the rest")
    path = urlsplit(callback).path
    if any(unquote(segment) in _DOT_SEGMENTS for segment in path.split("/")):
        raise BadRequest("hub.callback must not have dot segments (. or ..) in its path")
    return callback


def parse(form: FormData) -> SubscriptionRequest:
    """Validate a subscribe/unsubscribe form once, at intake. Unknown parameters are ignored (5.1)."""
    mode = form.get("hub.mode")
    if mode not in ("subscribe", "unsubscribe"):
        raise BadRequest("hub.mode must be subscribe, unsubscribe or publish")
    callback = check_callback(_str(form, "hub.callback"))
    topic = check_url(_str(form, "hub.topic"), "hub.topic")
    lease: int | None = None
    raw_lease = _str(form, "hub.lease_seconds")
    if raw_lease:
        try:
            lease = int(raw_lease)
        except ValueError:
            raise BadRequest("hub.lease_seconds must be an integer") from None
        if lease <= 0:
            raise BadRequest("hub.lease_seconds must be positive")
    secret = _str(form, "hub.secret") or None
    if secret is not None and len(secret.encode()) >= MAX_SECRET_BYTES:
        raise BadRequest("hub.secret must be less than 200 bytes")
    return SubscriptionRequest(mode, topic, callback, lease, secret)


def _str(form: FormData, key: str) -> str | None:
    value = form.get(key)
    return value if isinstance(value, str) else None


class Verifier:
    """Runs intent verifications in the background, a bounded number at a time."""

    def __init__(
        self,
        services: Services,
        guard: NetGuard,
        baseline: Callable[[str], Awaitable[None]] | None = None,
        on_queued: Callable[[], object] | None = None,
    ) -> None:
        self.services = services
        self._on_queued = on_queued
        self._baseline = baseline
        self.settings = services.settings
        self.guard = guard
        # A callback that accepts connections and never answers holds a slot for verify_timeout:
        # one host may hold only verify_per_host of them and queue verify_waiting_per_host, so a
        # tarpit delays its own verifications, not everyone's.
        self._slots = Slots(self.settings.verify_concurrency)
        self._host_slots = HostSlots(self.settings.verify_per_host)
        self._per_host: Counter[str] = Counter()  # verifications taken and not finished, per host
        # The same per client that asked (exempt clients have none): one client's tarpits on many
        # hosts take at most its own share of the global slots.
        self._client_slots = HostSlots(self.settings.verify_per_client)
        self._per_client: Counter[str] = Counter()
        self._waiting = 0
        self.max_waiting = 10_000
        self._tg: anyio.abc.TaskGroup | None = None
        self._early: list[SubscriptionRequest] = []  # taken before run() started
        self._closing = False
        self._unasked: set[anyio.CancelScope] = set()  # verifications before their GET: abandoned by aclose()
        self._grace = Grace()  # from an echo to its commit: drained by aclose(), shielded from cancellation
        self._activations = Activations(services.sessions, self._grace)

    @property
    def waiting(self) -> int:
        """Verifications taken and not finished."""
        return self._waiting

    def lease_for(self, asked: int | None) -> int:
        s = self.settings
        lease = asked if asked is not None else s.hub_lease_default
        return max(s.hub_lease_min, min(s.hub_lease_max, lease))

    async def run(self) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._activations.run)
                for req in self._early:
                    tg.start_soon(self._verify_bounded, req)
                self._early.clear()
                await anyio.sleep_forever()
        finally:
            # Ended (a failure its supervisor restarts us after): requests wait in _early meanwhile
            # instead of going to a task group that is gone.
            self._tg = None

    async def aclose(self) -> None:
        """Graceful shutdown (see the module docstring): take no more requests, abandon the
        verifications that have not sent their GET, and wait, at most :data:`~reversehub.core.settings.SHUTDOWN_GRACE`
        seconds, until every callback that echoed its challenge has its subscription stored.
        Idempotent: the server's drain calls it, then the app's lifespan again."""
        self._closing = True
        self._waiting -= len(self._early)
        for req in self._early:
            self._forget(req, self._host(req.callback))
        self._early.clear()
        for scope in self._unasked:
            scope.cancel()
        self._grace.begin()
        await self._grace.wait()

    def submit(self, req: SubscriptionRequest) -> None:
        if self._closing:
            raise Busy("the hub is shutting down; subscribe again in a moment")
        if self._waiting >= self.max_waiting:
            raise Busy("too many verifications waiting; try again later")
        host = self._host(req.callback)
        if host and self._per_host[host] >= self.settings.verify_waiting_per_host:
            raise Busy("too many verifications waiting for this callback host; try again later")
        if req.client and self._per_client[req.client] >= self.settings.verify_waiting_per_client:
            raise Busy("too many verifications waiting from this client; try again later")
        self._per_host[host] += 1
        if req.client:
            self._per_client[req.client] += 1
        self._waiting += 1
        if self._tg is None:
            self._early.append(req)
        else:
            self._tg.start_soon(self._verify_bounded, req)

    def _host(self, callback: str) -> str:
        """The key a callback's verifications share: its host, or "" for our own relay (served
        in-process: only the global bound applies)."""
        return "" if self.services.is_own(callback) else netloc(callback)

    async def _verify_bounded(self, req: SubscriptionRequest) -> None:
        host = self._host(req.callback)
        try:
            await self.verify(req)
        except Exception:
            logger.exception("verification of a %s request failed", req.mode)
        finally:
            self._waiting -= 1
            self._forget(req, host)

    def _forget(self, req: SubscriptionRequest, host: str) -> None:
        for counter, key in ((self._per_host, host), (self._per_client, req.client)):
            if key is not None and key in counter:
                counter[key] -= 1
                if not counter[key]:
                    del counter[key]

    @contextlib.asynccontextmanager
    async def _slot(self, req: SubscriptionRequest) -> AsyncIterator[None]:
        """A slot for one verification GET: the client's and the host's own bounds first, then the
        global one, so that nobody holds a global slot while waiting for a share."""
        host = self._host(req.callback)
        async with contextlib.AsyncExitStack() as stack:
            if req.client:
                await stack.enter_async_context(self._client_slots.hold(req.client))
            if host:
                await stack.enter_async_context(self._host_slots.hold(host))
            await stack.enter_async_context(self._slots)
            yield

    async def verify(self, req: SubscriptionRequest) -> bool:
        """Verify intent and apply the request if the callback confirms; True if it did.

        At shutdown (see the module docstring) the steps before the GET are abandoned, the GET
        runs until it is answered or the hub is cancelled, and the commit after an echo is shielded.
        """
        if self._closing:
            return False
        with anyio.CancelScope() as before_get:  # aclose() cancels it
            self._unasked.add(before_get)
            try:
                ready = await self._may_ask(req)
            finally:
                self._unasked.discard(before_get)
        if before_get.cancelled_caught or not ready:
            return False
        lease = self.lease_for(req.lease_seconds)
        challenge = secrets.token_urlsafe(24)
        params = {"hub.mode": req.mode, "hub.topic": req.topic, "hub.challenge": challenge}
        if req.mode == "subscribe":
            params["hub.lease_seconds"] = str(lease)
        asked_at = time.time()
        expected = challenge.encode()
        url = with_params(req.callback, params)
        try:
            async with self._slot(req):
                status, body = await ask(self.services.outbound, url, self.settings.verify_timeout, len(expected) + 1)
        except Unanswered as exc:
            logger.info("verification GET failed: %s", exc)
            return False
        if not (200 <= status < 300 and body == expected):
            logger.info("verification not confirmed (status %d)", status)
            return False
        # The callback echoed: it counts itself (un)subscribed from now on (5.3.1), so this is
        # stored even if the hub is stopping, within the shutdown grace.
        with self._grace.shielded() as commit:
            await self._apply(req, lease, asked_at)
        if commit.cancelled_caught:
            logger.error("shutting down: a verified %s was not stored in time", req.mode)
            return False
        return True

    async def _may_ask(self, req: SubscriptionRequest) -> bool:
        """The checks before the GET: the callback's address, and for a subscribe the policy (a
        refusal is sent as ``denied``, 5.2) and the topic's baseline fetch."""
        try:
            await self.guard.check_resolved(req.callback)
        except URLRefused as exc:
            logger.info("callback refused: %s", exc)
            return False
        if req.mode == "subscribe":
            # Its checks read the database: one that is away delays the verification (with backoff,
            # logged) instead of dropping it, so a subscribe accepted during an outage still happens.
            reason = await until_stored(lambda: self._check_subscribe(req), "a subscribe's checks (a read)")
            if reason is not None:
                await self.deny(req, reason)
                return False
            # The fetcher decides what the topic needs (a baseline, a fetch, or nothing when
            # another subscriber's fetch of it just now serves this one too). A renewal needs
            # none: that subscriber has had every entry all along.
            if self._baseline is not None and not await self._renewal(req):
                try:
                    await self._baseline(req.topic)
                except Exception:
                    logger.exception("baseline fetch failed")
        return True

    async def _apply(self, req: SubscriptionRequest, lease: int, asked_at: float) -> None:
        if req.mode == "subscribe":
            _, queued = await self._activations.activate(
                store.Activation(
                    req.topic,
                    req.callback,
                    req.secret,
                    lease,
                    time.time(),
                    since=asked_at,
                    callback_host=self._cap_host(req.callback),
                    client=req.client,
                )
            )
            if queued and self._on_queued is not None:
                self._on_queued()
        else:
            await until_stored(
                lambda: store.deactivate(
                    self.services.sessions, req.topic, req.callback, SubscriptionState.UNSUBSCRIBED
                ),
                "a verified unsubscribe",
            )

    async def _renewal(self, req: SubscriptionRequest) -> bool:
        sub = await until_stored(
            lambda: store.find(self.services.sessions, req.topic, req.callback), "a subscribe's checks (a read)"
        )
        return sub is not None and sub.state == SubscriptionState.ACTIVE and sub.expires_at > time.time()

    async def _check_subscribe(self, req: SubscriptionRequest) -> str | None:
        """Why the hub refuses ``req`` (None: it does not)."""
        reason = policy.check_subscription(self.settings, req.topic, req.callback)
        if reason is None:
            try:
                await self.guard.check_resolved(req.topic)
            except URLRefused as exc:
                reason = f"topic not allowed: {exc}"
        if reason is not None:
            return reason
        # --max-subscriptions-per-callback-host: one host cannot make the hub fan out without bound.
        if getattr(self.settings, "max_subscriptions_per_callback_host", 0):
            count, _ = await store.outlook(
                self.services.sessions, req.topic, req.callback, host=self._cap_host(req.callback)
            )
            reason = policy.check_callback_host_cap(self.settings, count)
        if reason is None and req.client is not None and self.settings.max_subscriptions_per_callback_host_per_client:
            # A share of that cap per client: one client must not fill a shared host's cap for the lease.
            mine = await store.client_share(
                self.services.sessions, req.callback, req.client, host=self._cap_host(req.callback)
            )
            reason = policy.check_callback_host_share(self.settings, mine)
        return reason

    def _cap_host(self, callback: str) -> str | None:
        """What the per-host cap counts a callback under, when not its host: callbacks on our own
        relay all share its host, so they count per relay name (one name cannot fill the cap of all)."""
        name = self.services.own_name(callback)
        return None if name is None else f"relay/{name}"

    async def deny(self, req: SubscriptionRequest, reason: str) -> None:
        """5.2: tell the subscriber its subscription was refused."""
        params = {"hub.mode": "denied", "hub.topic": req.topic, "hub.reason": reason}
        try:
            await self.services.outbound.request(
                "GET", with_params(req.callback, params), timeout=self.settings.verify_timeout, limit=0
            )
        except OutboundError:
            pass
