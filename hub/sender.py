"""A lean HTTP/1.1 client for deliveries: POST a body, read the status, keep the connection.

httpx costs about a millisecond of CPU per request (measured: 1,018 us per POST to a local server,
one core); a fan-out to thousands of callbacks needs a small fraction of that. This client does
one thing: ``POST`` with the headers it is given, over keep-alive connections pooled per origin
(``scheme://host:port``). The protocol work (request framing, header validation, the status line,
Content-Length / chunked / read-to-close bodies, whether a connection may be reused) is h11's;
this module only moves bytes over asyncio streams. Response bodies are read up to a small limit and
dropped; a connection is reused only when h11 says both sides finished the exchange cleanly.

A malformed response, a timeout or a closed connection ends in :class:`SendError`, which the
outbox treats like any failed attempt: it retries. Verification and topic fetches stay on
``services.http``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from urllib.parse import urlsplit

import h11

MAX_HEAD = 64 * 1024
MAX_DRAIN = 64 * 1024
READ_SIZE = 64 * 1024
IDLE_PER_ORIGIN = 64


class SendError(Exception):
    """The request could not be sent or its response not read."""


class _Stale(Exception):
    """The connection closed before any byte of a response arrived."""


class _Conn:
    __slots__ = ("h11", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def close(self) -> None:
        self.writer.close()


class Sender:
    def __init__(self, user_agent: str = "reversehub") -> None:
        self._idle: dict[tuple[str, str, int], list[_Conn]] = defaultdict(list)
        self._ssl: ssl.SSLContext | None = None
        self._user_agent = user_agent

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        """POST ``body`` to ``url``; returns the response status."""
        parts = urlsplit(url)
        scheme = parts.scheme
        host = parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        fields = [
            ("Host", parts.netloc.rpartition("@")[2]),
            ("Content-Length", str(len(body))),
            ("User-Agent", self._user_agent),
            *headers.items(),
        ]
        try:
            request = h11.Request(method="POST", target=target, headers=fields)
        except h11.LocalProtocolError as exc:
            raise SendError(f"bad request: {exc}") from None
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange((scheme, host, port), request, body)
        except TimeoutError:
            raise SendError("timed out") from None

    async def _exchange(self, key: tuple[str, str, int], request: h11.Request, body: bytes) -> int:
        idle = self._idle[key]
        while idle:
            conn = idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            status = await self._try(key, conn, request, body, pooled=True)
            if status is not None:
                return status
        status = await self._try(key, await self._connect(key), request, body, pooled=False)
        assert status is not None  # only a pooled connection is given up on
        return status

    async def _try(
        self, key: tuple[str, str, int], conn: _Conn, request: h11.Request, body: bytes, *, pooled: bool
    ) -> int | None:
        """One exchange on ``conn``; None when a pooled connection turned out closed (try another)."""
        try:
            return await self._roundtrip(key, conn, request, body)
        except BaseException as exc:
            conn.close()
            if pooled and isinstance(exc, (ConnectionError, _Stale)):
                return None  # the server closed an idle connection: try another, or a new one
            if isinstance(exc, _FAILURES):
                raise _failure(exc) from None
            raise

    async def _connect(self, key: tuple[str, str, int]) -> _Conn:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            reader, writer = await asyncio.open_connection(host, port, ssl=context, limit=MAX_HEAD)
        except OSError as exc:
            raise SendError(f"connect failed: {type(exc).__name__}") from None
        return _Conn(reader, writer)

    async def _roundtrip(self, key: tuple[str, str, int], conn: _Conn, request: h11.Request, body: bytes) -> int:
        h = conn.h11
        out = h.send(request) or b""
        if body:
            out += h.send(h11.Data(data=body)) or b""
        out += h.send(h11.EndOfMessage()) or b""
        conn.writer.write(out)
        status = 0
        drained = 0
        received = False
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                data = await conn.reader.read(READ_SIZE)
                if not data and not received:
                    raise _Stale
                received = True
                h.receive_data(data)  # b"" tells h11 the peer closed: read-to-close bodies end here
            elif type(event) is h11.Response:
                status = event.status_code
            elif type(event) is h11.Data:
                drained += len(event.data)
                if drained > MAX_DRAIN:
                    conn.close()  # not worth reading on: the connection goes with the rest
                    return status
            elif type(event) is h11.EndOfMessage:
                break
            # InformationalResponse (1xx): h11 checked it; the final response follows.
        idle = self._idle[key]
        if h.our_state is h11.DONE and h.their_state is h11.DONE and len(idle) < IDLE_PER_ORIGIN:
            h.start_next_cycle()
            idle.append(conn)
        else:
            conn.close()  # Connection: close, HTTP/1.0, read-to-close, or the pool is full
        return status

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


_FAILURES = (_Stale, OSError, h11.RemoteProtocolError, h11.LocalProtocolError)


def _failure(exc: BaseException) -> SendError:
    if isinstance(exc, _Stale):
        return SendError("connection closed before a response")
    if isinstance(exc, h11.ProtocolError):
        return SendError(f"malformed response: {exc}")
    return SendError(type(exc).__name__)
