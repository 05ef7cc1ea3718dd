"""A lean HTTP/1.1 client for deliveries: POST a body, read the status, keep the connection.

A fan-out to thousands of callbacks spends its CPU per request, and a general client's per-request
work (httpx's models, its pool, its stream machinery) is many times what a POST needs (bench/fanout.py
compares). This client does one thing: ``POST`` with the headers it is given, over keep-alive
connections pooled per origin (``scheme://host:port``). The protocol work (request framing, header
validation, the status line, Content-Length / chunked / read-to-close bodies, whether a connection
may be reused) is h11's; this module only moves bytes. Response bodies are read up to a small limit and dropped; a
connection is reused only when h11 says both sides finished the exchange cleanly.

Each connection is an :class:`asyncio.Protocol` that feeds h11 as bytes arrive, so an exchange
costs one future and one timer: no stream reader waking the task for every read, no timeout
context per request, and h11's own work is nearly all a request costs.

Each new connection resolves its host once through :class:`reversehub.core.egress.Egress` and
connects to an address it judged (TLS still checks the certificate against the host name): the SSRF
verdict and the connection cannot disagree, and a kept-alive connection costs no lookup.

A malformed response, a timeout or a closed connection ends in :class:`SendError`, which the
outbox treats like any failed attempt: it retries. Verification and topic fetches go through httpx,
and https callbacks are verified against the same CAs: :class:`reversehub.core.outbound.LeanOutbound`
gives both the one :class:`ssl.SSLContext`, so the hub never verifies a callback it then cannot
deliver to, nor delivers to one it could not verify.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from urllib.parse import SplitResult, urlsplit

import h11
import httpx

from reversehub.core.egress import Egress, Refused

MAX_HEAD = 64 * 1024
MAX_DRAIN = 64 * 1024
IDLE_PER_ORIGIN = 64
ORIGINS_CACHED = 4096

_Key = tuple[str, str, int]
_END = h11.EndOfMessage()  # events are immutable: one will do for every request


class SendError(Exception):
    """The request could not be sent or its response not read."""


class _Stale(Exception):
    """The connection closed before any byte of a response arrived."""


class _Conn(asyncio.Protocol):
    """One connection: its h11 state, and the response of the exchange in progress, parsed as
    its bytes arrive. ``waiter`` gets the status once h11 has seen the whole response (or the
    first MAX_DRAIN bytes of its body), or the error that ended the exchange."""

    __slots__ = ("closed", "drained", "h11", "received", "reusable", "status", "transport", "waiter")

    def __init__(self) -> None:
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[int] | None = None
        self.status = self.drained = 0
        self.received = self.reusable = self.closed = False

    async def exchange(self, out: list[bytes], deadline: float) -> int:
        assert self.transport is not None and self.waiter is None
        if self.transport.is_closing():  # closed before connection_lost told us: as if stale
            self.closed = True
            raise _Stale
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[int] = loop.create_future()
        self.waiter = waiter
        self.status = self.drained = 0
        self.received = self.reusable = False
        self.transport.writelines(out)  # one writev
        timer = loop.call_at(deadline, self._expire, waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.waiter = None

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _expire(self, waiter: asyncio.Future[int]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: BaseException) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            self.close()  # bytes nobody asked for: whatever the server meant, not a connection to reuse
            return
        self.received = True
        self.h11.receive_data(data)
        self._advance(waiter)

    def eof_received(self) -> bool:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if not self.received:
                waiter.set_exception(_Stale())
            else:
                self.h11.receive_data(b"")  # the peer closed: a read-to-close body ends here
                self._advance(waiter)
        self.closed = True
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(_Stale() if not self.received else (exc or ConnectionResetError("connection closed")))

    def _advance(self, waiter: asyncio.Future[int]) -> None:
        h = self.h11
        try:
            while True:
                event = h.next_event()
                kind = type(event)
                if event is h11.NEED_DATA:
                    return
                if kind is h11.Response:
                    self.status = event.status_code  # type: ignore[union-attr]
                elif kind is h11.Data:
                    self.drained += len(event.data)  # type: ignore[union-attr]
                    if self.drained > MAX_DRAIN:
                        waiter.set_result(self.status)  # not worth reading on: the connection goes
                        return
                elif kind is h11.EndOfMessage:
                    # Reuse needs both sides DONE (not Connection: close, HTTP/1.0 or read-to-close)
                    # and nothing after the response: extra bytes could pass for the next one.
                    self.reusable = h.our_state is h11.DONE and h.their_state is h11.DONE and not h.trailing_data[0]
                    waiter.set_result(self.status)
                    return
                elif kind is h11.ConnectionClosed:
                    raise ConnectionResetError("connection closed mid-response")
                # InformationalResponse (1xx): h11 checked it; the final response follows.
        except (h11.RemoteProtocolError, ConnectionResetError) as exc:
            waiter.set_exception(exc)
            self.close()


@functools.lru_cache(maxsize=ORIGINS_CACHED)  # a fan-out posts to the same few origins again and again
def _origin(scheme: str, netloc: str) -> tuple[_Key, bytes]:
    """The pool key (scheme, host, port) and the Host header of a URL's ``scheme`` and ``netloc``."""
    parts = SplitResult(scheme, netloc, "", "", "")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise SendError("bad port") from None
    try:
        host = netloc.rpartition("@")[2].encode("ascii")
    except UnicodeEncodeError:
        raise SendError("bad request: host not in ASCII") from None
    return (scheme, parts.hostname or "", port), host


class Sender:
    def __init__(
        self,
        user_agent: str = "reversehub",
        *,
        ssl_context: ssl.SSLContext | None = None,
        egress: Egress | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        """``ssl_context`` for https callbacks: the one verification uses; when None, httpx's
        default (SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's bundle), not OpenSSL's defaults.
        ``egress``: where connections may go (by default anywhere, still resolved once per connection).
        ``connect_timeout``: at most this long to resolve and connect, within the request's timeout."""
        self._idle: dict[_Key, list[_Conn]] = {}
        self._ssl = ssl_context
        self._user_agent = user_agent.encode("ascii")
        self._egress = egress if egress is not None else Egress(allow_private=True)
        self._connect_timeout = connect_timeout

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        """POST ``body`` to ``url``; returns the response status."""
        parts = urlsplit(url)
        key, host = _origin(parts.scheme, parts.netloc)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        # Bytes, not str: h11 validates them all the same, and skipping its own str-to-bytes step
        # is a large part of what building the request costs.
        fields = [(b"Host", host), (b"Content-Length", b"%d" % len(body)), (b"User-Agent", self._user_agent)]
        try:
            fields += [(name.encode("ascii"), value.encode("ascii")) for name, value in headers.items()]
            request = h11.Request(method=b"POST", target=target.encode("ascii"), headers=fields)
        except (h11.LocalProtocolError, UnicodeEncodeError) as exc:
            raise SendError(f"bad request: {exc}") from None
        deadline = asyncio.get_running_loop().time() + timeout
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            status = await self._try(key, conn, request, body, deadline, pooled=True)
            if status is not None:
                return status
        status = await self._try(key, await self._connect(key, deadline), request, body, deadline, pooled=False)
        assert status is not None  # only a pooled connection is given up on
        return status

    async def _try(
        self, key: _Key, conn: _Conn, request: h11.Request, body: bytes, deadline: float, *, pooled: bool
    ) -> int | None:
        """One exchange on ``conn``; None when a pooled connection turned out closed (try another)."""
        h = conn.h11
        try:
            # The body goes out as it is (no copy into one buffer: fat pings can be large).
            out = [h.send(request) or b""]
            if body:
                out += h.send_with_data_passthrough(h11.Data(data=body)) or ()
            out.append(h.send(_END) or b"")
            status = await conn.exchange(out, deadline)
        except BaseException as exc:
            conn.close()
            if pooled and isinstance(exc, _Stale):
                return None  # the server closed an idle connection: try another, or a new one
            if isinstance(exc, _FAILURES):
                raise _failure(exc) from None
            raise
        idle = self._idle.get(key)
        if idle is None:
            idle = self._idle[key] = []
        if conn.reusable and not conn.closed and len(idle) < IDLE_PER_ORIGIN:
            h.start_next_cycle()
            idle.append(conn)
        else:
            conn.close()  # Connection: close, HTTP/1.0, read-to-close, a large body, or the pool is full
        return status

    async def _connect(self, key: _Key, deadline: float) -> _Conn:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        if self._connect_timeout is not None:
            deadline = min(deadline, loop.time() + self._connect_timeout)
        try:
            async with asyncio.timeout_at(deadline):
                # Resolved once, here: the connection goes to an address that was judged, never to
                # whatever a second lookup of the name would answer.
                addresses = await self._egress.addresses(host, port)
                failure: OSError = ConnectionRefusedError()
                for address in addresses:
                    try:
                        transport, conn = await loop.create_connection(
                            _Conn, address, port, ssl=context, server_hostname=host if context else None
                        )
                        break
                    except ssl.SSLCertVerificationError:
                        raise
                    except OSError as exc:
                        failure = exc  # the next address, as a client trying each resolved address would
                else:
                    raise failure
        except TimeoutError:
            raise SendError("timed out") from None
        except Refused as exc:
            raise SendError(f"refused: {exc}") from None
        except ssl.SSLCertVerificationError as exc:
            raise SendError(f"connect failed: certificate not verified ({exc.verify_message})") from None
        except OSError as exc:
            raise SendError(f"connect failed: {type(exc).__name__}") from None
        if context is not None:
            # The context is shared with httpx, whose pool sets its ALPN list on it: were HTTP/2 ever
            # enabled there, a server could pick h2 here, and this client speaks only HTTP/1.1.
            tls = transport.get_extra_info("ssl_object")
            protocol = tls.selected_alpn_protocol() if tls is not None else None
            if protocol not in (None, "http/1.1"):
                conn.close()
                raise SendError(f"server chose {protocol} over HTTP/1.1")
        return conn

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


_FAILURES = (_Stale, OSError, h11.RemoteProtocolError, h11.LocalProtocolError)


def _failure(exc: BaseException) -> SendError:
    if isinstance(exc, TimeoutError):
        return SendError("timed out")
    if isinstance(exc, _Stale):
        return SendError("connection closed before a response")
    if isinstance(exc, h11.ProtocolError):
        return SendError(f"malformed response: {exc}")
    return SendError(type(exc).__name__)
