"""A ReverseHttp application: claim a name on a relay and serve the requests that arrive for it.

The Python counterpart of the original ReverseHttp libraries (Garnock-Jones, 2008-2009)::

    async def hello(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [("content-type", "text/plain")], b"hello\\n")

    async with Endpoint("http://127.0.0.1:8000/reversehttp", hello, name="alice") as ep:
        print(ep.public_url)            # http://127.0.0.1:8000/relay/alice/
        await anyio.sleep_forever()

``Endpoint(relay, app=starlette_app)`` serves an ASGI application instead (its lifespan runs too).

Protocol (ReverseHttp, "Registration", "Waiting for a request", "Replying"): ``POST`` name/token/lease
to the gateway; the answer's ``Link rel="first"`` is a request URL, ``rel="related"`` the public URL,
``Location`` the private URL. ``GET`` on a request URL holds until a request arrives (200
``message/http`` with ``Link rel="next"``) or times out (204: poll again); the reply is ``POST``ed to
the URL the request came from. Several pollers share the work; each follows its own chain of request
URLs, which it gets by registering again with the same name and token (a refresh, 204). A 404 or
410 on a request URL means the registration is gone: register again (and tell the owner, whose
subscriptions may need renewing). Network errors are retried with exponential backoff.

Transports (``transport=``): with ``"auto"`` (the default) each poller first asks for PTTH on its
request URL (draft-kazuho-ptth-ptth-00, :mod:`clients.ptth`): a relay that offers it answers 101 and
then writes requests on that connection, which the poller answers in order; one that does not
answers the same ``GET`` as the poll it is, and the poller long-polls from there on (it asks again
after its next reconnect). ``"ptth"`` never long-polls through httpx (each poll is an upgrade
request), ``"long-poll"`` never asks. A custom httpx ``transport``/``http`` client or an
``HTTP(S)_PROXY`` for the relay make ``"auto"`` long-poll: the transposed connection is a socket of
our own, which cannot follow an httpx transport or an HTTP proxy.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urljoin

import httpx

from clients import ptth
from clients._asgi import ASGIApp, Lifespan, call_app
from clients._links import find_link
from clients.errors import ClosedError, RelayError, server_hint, unreachable
from relay.wire import HttpRequest, HttpResponse, WireError, parse_request, serialize_response

logger = logging.getLogger(__name__)

Handler = Callable[[HttpRequest], "Awaitable[HttpResponse] | HttpResponse"]
StateCallback = Callable[[str], None]
RepliedCallback = Callable[[HttpRequest, bool], None]

# Connection states reported to ``on_state``.
REGISTERED = "registered"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
REREGISTERED = "reregistered"
CLOSED = "closed"
# Transports, also reported to ``on_state`` when the one in use changes (see Endpoint.transport).
PTTH = "ptth"
LONG_POLL = "long-poll"
MIXED = "ptth+long-poll"
TRANSPORTS = (PTTH, LONG_POLL, MIXED)
TransportChoice = Literal["auto", "ptth", "long-poll"]
# A transposed connection that ends sooner than this after it was made is retried with backoff (a
# relay that accepts and drops at once must not be hammered); a longer one is made again at once.
PTTH_STABLE = 5.0
# Seconds between the attempts to post one reply (see Endpoint._reply).
REPLY_RETRIES = (0.25, 0.5, 1.0, 2.0)


@dataclass(frozen=True)
class Registration:
    first: str  # request URL to poll
    public_url: str
    private_url: str
    created: bool  # 201 (new) rather than 204 (refreshed)


def random_name(prefix: str = "rh") -> str:
    """A fresh DNS label (RFC 1034: letters, digits, hyphens, <= 63 characters)."""
    return f"{prefix}-{secrets.token_hex(8)}"


async def backoff_sleep(delay: float, cap: float) -> float:
    """Sleep ``delay`` with jitter (so many clients do not return at once); returns the next delay."""
    await asyncio.sleep(delay * (0.5 + random.random() / 2))
    return min(delay * 2, cap)


class Endpoint:
    """Serve ``handler`` (``HttpRequest -> HttpResponse``, sync or async) or an ASGI ``app`` over a relay name.

    ``pollers`` long-polls run at once, so that many requests are handled concurrently.
    ``on_state`` hears ``registered``, ``connected``, ``reconnecting``, ``reregistered``, ``closed``.
    ``on_reregistered`` is awaited (in a task) after the registration was lost and made again.
    ``on_replied(request, accepted)`` is called once the reply to ``request`` was POSTed to the
    relay: ``accepted`` is True when the relay took it (2xx, ReverseHttp "Replying": 202), so it
    goes on to the requester; False when the POST failed or was refused, so the requester gets an
    error from the relay instead (504, "no reply") and never sees what the handler answered.

    ``mailbox=True`` registers the name in mailbox mode (docs/mailbox.md): while nothing polls it,
    the relay stores its requests and answers them 202, and this endpoint receives them, oldest
    first, when it starts again with the same ``name`` and ``token`` (so both are required).
    :meth:`aclose` then keeps the name (until its lease runs out) instead of giving it up.

    ``transport``: ``"auto"`` (default: PTTH where the relay offers it, else long-polling),
    ``"ptth"``, ``"long-poll"``, or an httpx transport to reach the relay through (long-polling
    then; see the module docstring). :attr:`transport` says what the pollers use now (``ptth``,
    ``long-poll``, ``ptth+long-poll``), and ``on_state`` hears it each time it changes.
    ``verify`` checks the relay's certificate on the PTTH connections as httpx does (``True``:
    certifi's CAs, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``; ``False``; an ``ssl.SSLContext``); it is
    also given to the httpx client the endpoint makes.
    """

    def __init__(
        self,
        relay: str,
        handler: Handler | None = None,
        *,
        app: ASGIApp | None = None,
        name: str | None = None,
        token: str | None = None,
        lease: int | None = None,
        pollers: int = 2,
        http: httpx.AsyncClient | None = None,
        transport: TransportChoice | httpx.AsyncBaseTransport | None = None,
        verify: ssl.SSLContext | bool = True,
        poll_read_timeout: float = 120.0,
        backoff: tuple[float, float] = (0.1, 30.0),
        on_state: StateCallback | None = None,
        on_reregistered: Callable[[], Awaitable[None]] | None = None,
        on_replied: RepliedCallback | None = None,
        mailbox: bool = False,
    ) -> None:
        if (handler is None) == (app is None):
            raise TypeError("give exactly one of handler or app=")
        if mailbox and (name is None or token is None):
            raise ValueError("mailbox=True needs a name and a token: they claim the stored requests again")
        if pollers < 1:
            raise ValueError("pollers must be at least 1")
        choice = "auto" if transport is None else transport
        http_transport: httpx.AsyncBaseTransport | None = None
        if not isinstance(choice, str):
            http_transport, choice = choice, "long-poll"  # requests go through it: no socket of our own
        elif choice not in ("auto", "ptth", "long-poll"):
            raise ValueError(f"transport must be 'auto', 'ptth' or 'long-poll', not {choice!r}")
        elif choice == "auto" and (http is not None or ptth.proxied(relay)):
            choice = "long-poll"
        self.transport_choice: str = choice
        self.relay = relay
        self.name = name or random_name()
        self.token = token or secrets.token_urlsafe(24)
        self.lease = lease
        self.mailbox = mailbox
        self.pollers = pollers
        self.public_url: str | None = None
        self.state = "new"
        self._handler = handler
        self._app = app
        self._lifespan = Lifespan(app) if app is not None else None
        self._own_http = http is None
        self._http = http or httpx.AsyncClient(transport=http_transport, verify=verify, timeout=httpx.Timeout(10.0))
        self._poll_timeout = httpx.Timeout(10.0, read=poll_read_timeout)
        self._verify = verify
        self._ssl: ssl.SSLContext | None = None  # made when first needed (loading the CAs takes a while)
        self._transports: list[str | None] = [None] * pollers  # each poller's transport, once it has one
        self._reported_transport: str | None = None
        self._ptth_refused = False
        self._backoff = backoff
        self._on_state = on_state
        self._on_reregistered = on_reregistered
        self._on_replied = on_replied
        self._private_url: str | None = None
        self._generation = 0
        self._recover_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._busy: set[asyncio.Task[Any]] = set()  # pollers handling a request: let them finish
        self._closing = False
        self._started = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Register and start polling; returns the public URL. Raises :class:`RelayError` if refused,
        :class:`UnreachableError` if the relay does not answer."""
        if self._closing:
            raise ClosedError("endpoint is closed")
        if self._started:
            assert self.public_url is not None
            return self.public_url
        try:
            if self._lifespan is not None:
                await self._lifespan.startup()
            try:
                registration = await self._register()
            except httpx.HTTPError as exc:
                raise unreachable(self.relay, exc, server_hint(self.relay)) from exc
        except BaseException:
            await self.aclose()
            raise
        self._started = True
        self._set_state(REGISTERED)
        for index in range(self.pollers):
            self._spawn(self._poller(index, registration.first if index == 0 else None, self._generation))
        return registration.public_url

    @property
    def transport(self) -> str | None:
        """What the pollers use now: ``ptth``, ``long-poll``, or ``ptth+long-poll`` while they differ
        (one came back from a reconnect on the other); None until one of them got through."""
        kinds = {kind for kind in self._transports if kind is not None}
        if not kinds:
            return None
        return kinds.pop() if len(kinds) == 1 else MIXED

    @property
    def transports(self) -> tuple[str | None, ...]:
        """Each poller's transport (``ptth`` or ``long-poll``; None until it got through)."""
        return tuple(self._transports)

    @property
    def inspector_url(self) -> str | None:
        """The name's request inspector (a capability URL: show it only to the owner, never log it)."""
        return None if self._private_url is None else self._private_url + "/requests"

    async def aclose(self, *, release: bool = True) -> None:
        """Stop polling (requests being handled finish first) and relinquish the name (DELETE); a
        mailbox name is kept, so that the relay stores its requests until the endpoint is back.

        ``release=False`` only detaches: the name stays registered (until its lease ends) for
        whoever holds its token, so a durable subscriber started again re-claims the same name."""
        if self._closing:
            return
        self._closing = True
        for task in list(self._tasks):
            if task not in self._busy:
                task.cancel()
        if self._busy:
            await asyncio.wait(list(self._busy), timeout=10.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._private_url is not None and release and not self.mailbox:
            try:
                await self._http.delete(self._private_url, timeout=5.0)
            except httpx.HTTPError as exc:
                logger.warning("could not relinquish relay name %s: %s", self.name, exc)
        if self._lifespan is not None:
            await self._lifespan.shutdown()
        if self._own_http:
            await self._http.aclose()
        self._set_state(CLOSED)

    async def __aenter__(self) -> Endpoint:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- registration ------------------------------------------------------------------------

    async def _register(self) -> Registration:
        data = {"name": self.name, "token": self.token}
        if self.lease is not None:
            data["lease"] = str(self.lease)
        if self.mailbox:
            data["mailbox"] = "1"
        response = await self._http.post(self.relay, data=data)
        if response.status_code == 403:
            raise RelayError(f"relay name {self.name!r} is held by someone else (token mismatch)", 403)
        if response.status_code >= 300:
            reason = response.text.strip()[:200]
            raise RelayError(f"relay refused {self.name!r}: HTTP {response.status_code} {reason}", response.status_code)
        links = response.headers.get_list("link")
        base = str(response.url)
        first = find_link(links, "first", base)
        public = find_link(links, "related", base)
        location = response.headers.get("location")
        if first is None or public is None or location is None:
            raise RelayError("relay answered without Link rel=first/related and Location", response.status_code)
        self._private_url = urljoin(base, location)
        if public != self.public_url:
            self.public_url = public
        return Registration(first, public, self._private_url, response.status_code == 201)

    async def _register_until_done(self) -> Registration:
        delay = self._backoff[0]
        while True:
            try:
                return await self._register()
            except (httpx.HTTPError, RelayError) as exc:
                logger.warning("relay registration of %s failed (%s); retrying in %.1fs", self.name, exc, delay)
                self._set_state(RECONNECTING)
                delay = await self._sleep(delay)

    async def _recover(self, generation: int) -> tuple[str, int]:
        """The registration is gone (404/410 on a request URL): the first poller to notice registers
        again and tells the owner; every poller gets a fresh request URL of its own."""
        async with self._recover_lock:
            registration = await self._register_until_done()
            if generation == self._generation:
                self._generation += 1
                logger.info("relay registration of %s was lost; registered again", self.name)
                self._set_state(REREGISTERED)
                if self._on_reregistered is not None:
                    self._spawn(self._on_reregistered(), name="reregistered")
            return registration.first, self._generation

    # -- polling -----------------------------------------------------------------------------

    async def _poller(self, index: int, url: str | None, generation: int) -> None:
        if url is None:
            url = (await self._register_until_done()).first
            generation = self._generation
        delay = self._backoff[0]
        connected = True
        try_ptth = self.transport_choice != LONG_POLL
        task = asyncio.current_task()
        assert task is not None
        while not self._closing:
            try:
                if try_ptth:
                    started = time.monotonic()
                    response = await self._transposed(index, url, connected)
                    if response is None:  # a transposed connection was served and has ended
                        if self._closing:
                            return
                        connected = True
                        if time.monotonic() - started < PTTH_STABLE:
                            delay = await self._sleep(delay)
                        else:
                            delay = self._backoff[0]
                        continue
                    if response.status_code in (200, 204):  # served as a poll: PTTH is not offered
                        try_ptth = self._no_ptth(index, "answered the PTTH upgrade as a poll", polled=True)
                    elif response.status_code in (400, 503):
                        # Offered, but not on our terms (400, the body says why) or not now: the
                        # relay's PTTH connections are at their bound (503). A poll still gets through.
                        why = f"refused the PTTH upgrade: {response.text.strip()[:200]}"
                        try_ptth = self._no_ptth(index, why, polled=False)
                        if not try_ptth:
                            continue  # the request URL is still good for a poll
                else:
                    response = await self._http.get(url, headers={"accept": "message/http"}, timeout=self._poll_timeout)
                    self._use(index, LONG_POLL)
            except (httpx.HTTPError, ptth.PtthError) as exc:
                if self._closing:
                    return
                if connected:
                    logger.warning("relay poll failed (%s); retrying with backoff", type(exc).__name__)
                    self._set_state(RECONNECTING)
                connected = False
                try_ptth = self.transport_choice != LONG_POLL  # a relay back from a restart may offer it now
                delay = await self._sleep(delay)
                continue
            status = response.status_code
            if status in (404, 410):
                if self._closing:
                    return
                url, generation = await self._recover(generation)
                connected = True
                continue
            if status not in (200, 204):
                if connected:
                    logger.warning("relay poll answered HTTP %s; retrying with backoff", status)
                    self._set_state(RECONNECTING)
                connected = False
                delay = await self._sleep(delay)
                continue
            if not connected:
                connected = True
                self._set_state(CONNECTED)
            delay = self._backoff[0]
            next_url = find_link(response.headers.get_list("link"), "next", url) or url
            if status == 200:
                self._busy.add(task)
                try:
                    request, reply = await self._handle(response)
                    accepted = await self._reply(url, reply, request.method if request is not None else None)
                    if request is not None:
                        self._replied(request, accepted)
                finally:
                    self._busy.discard(task)
            url = next_url

    async def _transposed(self, index: int, url: str, connected: bool) -> httpx.Response | None:
        """Ask for PTTH on ``url``: serve the transposed connection until it ends (None), or return
        the relay's answer as the poll it served instead. Raises :class:`ptth.PtthError` when the
        upgrade fails on the network."""
        if self._ssl is None and url.startswith("https:"):
            self._ssl = httpx.create_ssl_context(verify=self._verify)
        outcome = await ptth.upgrade(
            url,
            ssl_context=self._ssl,
            connect_timeout=self._poll_timeout.connect or 10.0,
            read_timeout=self._poll_timeout.read or 120.0,
        )
        if isinstance(outcome, ptth.PollAnswer):
            request = httpx.Request("GET", url)
            return httpx.Response(outcome.status, headers=outcome.headers, content=outcome.body, request=request)
        if not connected:
            self._set_state(CONNECTED)
        self._use(index, PTTH)
        task = asyncio.current_task()
        assert task is not None

        async def serve(request: HttpRequest, client: str | None) -> HttpResponse:
            self._busy.add(task)  # aclose lets the request in hand be answered
            return await self._answer(request, client)

        def written(request: HttpRequest, ok: bool) -> None:
            self._busy.discard(task)
            self._replied(request, ok)

        try:
            await outcome.serve(serve, closing=lambda: self._closing, written=written)
        except ptth.PtthError as exc:
            logger.info("PTTH connection ended: %s", exc)
        finally:
            self._busy.discard(task)
        return None

    async def _handle(self, response: httpx.Response) -> tuple[HttpRequest | None, HttpResponse]:
        """The request the relay delivered (None if unparseable) and the handler's answer to it."""
        try:
            request = parse_request(response.content)
        except WireError as exc:
            logger.warning("relay sent an unparseable request: %s", exc)
            return None, HttpResponse(400, [("content-type", "text/plain")], b"Bad Request\n")
        return request, await self._answer(request, response.headers.get("requesting-client"))

    async def _answer(self, request: HttpRequest, client: str | None) -> HttpResponse:
        """The handler's (or app's) answer to ``request``; 500 when it fails."""
        try:
            if self._app is not None:
                assert self.public_url is not None
                return await call_app(self._app, request, self.public_url, client)
            assert self._handler is not None
            result = self._handler(request)
            if inspect.isawaitable(result):
                result = await result
        except Exception:
            logger.exception("handler failed on %s %s", request.method, request.target.partition("?")[0])
            return HttpResponse(500, [("content-type", "text/plain")], b"Internal Server Error\n")
        framed = result.header("content-length") is not None or result.header("transfer-encoding") is not None
        if request.method == "HEAD" and result.body and not framed:
            # A handler that answers HEAD as GET: its Content-Length is the size GET would get
            # (RFC 9110 9.3.2); the body itself is never sent.
            return replace(result, headers=[*result.headers, ("Content-Length", str(len(result.body)))])
        return result

    async def _reply(self, url: str, reply: HttpResponse, method: str | None) -> bool:
        """POST the reply to the request URL it answers; True if the relay accepted it.

        A reply that cannot be posted (the serving process died, its database or broker is away:
        a connection error, 502 or 503) is posted again a few times: the relay keeps the delivery
        bound to its request URL until the reply timeout, so another process behind the same
        address takes it, and the requester gets its answer instead of a 504 a minute later."""
        body = serialize_response(reply, method)  # a HEAD's reply goes without its body (RFC 9110 9.3.2)
        for attempt, delay in enumerate((*REPLY_RETRIES, None)):
            try:
                answer = await self._http.post(url, content=body, headers={"content-type": "message/http"})
            except httpx.HTTPError as exc:
                problem = f"could not post the reply to the relay: {exc}"
                retry = isinstance(exc, httpx.TransportError)
            else:
                if answer.status_code < 300:
                    return True
                if answer.status_code == 404 and attempt:
                    return False  # an earlier attempt may have got through: its answer was lost
                problem = f"relay refused the reply: HTTP {answer.status_code}"
                retry = answer.status_code in (502, 503)
            if not retry or delay is None or self._closing:
                # The requester will see 504 and, if it is a hub, retry the delivery.
                logger.warning("%s", problem)
                return False
            await asyncio.sleep(delay)
        return False

    def _replied(self, request: HttpRequest, accepted: bool) -> None:
        if self._on_replied is not None:
            try:
                self._on_replied(request, accepted)
            except Exception:
                logger.exception("on_replied callback failed")

    # -- helpers -----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any], name: str = "poller") -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("relay endpoint task failed", exc_info=task.exception())

    async def _sleep(self, delay: float) -> float:
        return await backoff_sleep(delay, self._backoff[1])

    def _no_ptth(self, index: int, why: str, *, polled: bool) -> bool:
        """The relay does not take this poller's PTTH upgrade (``polled``: it served it as a poll):
        whether to keep asking (``"ptth"``)."""
        if polled or self.transport_choice == "auto":
            self._use(index, LONG_POLL)
        if self._ptth_refused:
            return self.transport_choice == "ptth"
        self._ptth_refused = True  # said once, not at every poll
        if self.transport_choice == "auto":
            logger.info("the relay %s: long-polling", why)
            return False
        logger.warning("the relay %s; transport='ptth' keeps asking", why)
        return True

    def _use(self, index: int, kind: str) -> None:
        """Poller ``index`` now uses transport ``kind``: tell ``on_state`` if the endpoint's changed."""
        self._transports[index] = kind
        current = self.transport
        if current != self._reported_transport:
            self._reported_transport = current
            if current is not None:
                self._set_state(current, transport=True)

    def _set_state(self, state: str, *, transport: bool = False) -> None:
        if not transport:  # a transport is reported beside the state, not instead of it
            self.state = state
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                logger.exception("on_state callback failed")
