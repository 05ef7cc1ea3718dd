"""A lean HTTP/1.1 client for deliveries: POST a body, read the status, keep the connection.

httpx costs about a millisecond of CPU per request (measured: 1,018 us per POST to a local server,
one core); a fan-out to thousands of callbacks needs a small fraction of that. This client does
one thing: ``POST`` with the headers it is given, over keep-alive connections pooled per origin
(``scheme://host:port``), parsing only the status line and the framing of the response
(Content-Length, chunked, or read-to-close). Response bodies are read up to a small limit and
dropped; a connection whose response was not read to its end is closed rather than reused.

Anything unusual (a 1xx, a malformed response) ends in :class:`SendError`, which the outbox treats
like any failed attempt: it retries. Verification and topic fetches stay on ``services.http``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from urllib.parse import urlsplit

MAX_HEAD = 64 * 1024
MAX_DRAIN = 64 * 1024
IDLE_PER_ORIGIN = 64


class SendError(Exception):
    """The request could not be sent or its response not read."""


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

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
        host_header = parts.netloc.rpartition("@")[2]
        lines = [f"POST {target} HTTP/1.1", f"Host: {host_header}", f"Content-Length: {len(body)}"]
        lines.append(f"User-Agent: {self._user_agent}")
        for name, value in headers.items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise SendError("header value with a line break")
            lines.append(f"{name}: {value}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        key = (scheme, host, port)
        try:
            async with asyncio.timeout(timeout):
                return await self._exchange(key, request)
        except TimeoutError:
            raise SendError("timed out") from None

    async def _exchange(self, key: tuple[str, str, int], request: bytes) -> int:
        idle = self._idle[key]
        while idle:
            conn = idle.pop()
            if conn.reader.at_eof() or conn.writer.is_closing():
                conn.close()
                continue
            try:
                return await self._roundtrip(key, conn, request)
            except (ConnectionError, asyncio.IncompleteReadError, _Stale):
                conn.close()  # the server closed an idle connection: try another, or a new one
            except BaseException:
                conn.close()
                raise
        conn = await self._connect(key)
        try:
            return await self._roundtrip(key, conn, request)
        except _Stale:
            conn.close()
            raise SendError("connection closed before a response") from None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            raise SendError(type(exc).__name__) from None
        except BaseException:
            conn.close()
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

    async def _roundtrip(self, key: tuple[str, str, int], conn: _Conn, request: bytes) -> int:
        conn.writer.write(request)
        head = await conn.reader.readuntil(b"\r\n\r\n")
        if not head.strip():
            raise _Stale
        lines = head[:-4].decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            conn.close()
            raise SendError("not an HTTP/1.x response")
        status = int(status_line[1])
        length: int | None = None
        chunked = False
        keep = status_line[0] == "HTTP/1.1"
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "transfer-encoding":
                chunked = "chunked" in value.lower()
            elif name == "connection":
                token = value.strip().lower()
                keep = "close" not in token and (keep or "keep-alive" in token)
        if 100 <= status < 200:
            conn.close()
            raise SendError("interim responses are not supported")
        reusable = keep
        if status in (204, 304):
            pass
        elif chunked:
            reusable = reusable and await self._drain_chunked(conn)
        elif length is not None:
            if length > MAX_DRAIN:
                reusable = False
            elif length:
                await conn.reader.readexactly(length)
        else:
            reusable = False  # body runs to the end of the connection: nothing to reuse
        if reusable and len(self._idle[key]) < IDLE_PER_ORIGIN:
            self._idle[key].append(conn)
        else:
            conn.close()
        return status

    async def _drain_chunked(self, conn: _Conn) -> bool:
        total = 0
        while True:
            size_line = await conn.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while (await conn.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass  # trailers
                return True
            total += size
            if total > MAX_DRAIN:
                return False
            await conn.reader.readexactly(size + 2)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()


class _Stale(Exception):
    """A reused connection turned out to be closed (no response bytes at all)."""
