"""uvicorn's httptools protocol, with the writes of one event-loop iteration sent as one.

uvicorn writes a response's head when the app sends ``http.response.start`` and its body when the
app sends ``http.response.body``: two ``send()`` system calls for every small response, and on a
loopback or LAN connection each one wakes the peer. A relayed request is three responses (to the
requester, to the poll, to the reply POST), so half the server's time went into the kernel's
``write`` (bench/relay_throughput.py, py-spy). :class:`CoalescingTransport` holds what is written
during one turn of the event loop and hands it to the real transport in one ``writelines`` (one
``writev`` under uvloop) at the next turn; HTTP parsing and framing stay uvicorn's.

What the real transport promises still holds:

- order: every byte goes through the one buffer, in the order written;
- flow control: once ``HIGH_WATER_LIMIT`` bytes are held they are written at once, so the real
  transport sees a slow reader and pauses the protocol (uvicorn's ``send`` then waits to drain)
  exactly as without us; a body that big is not held at all;
- ``close()`` and ``write_eof()`` write what is held first (``Connection: close``, errors, the
  keep-alive timeout); ``abort()`` and a lost connection drop it, as the real transport does.

It also tells a held request that its connection is gone without the request watching for it.
ASGI says so only through ``receive()``, so a held poll would need a task of its own just to wait
for ``http.disconnect``: with thousands of polls held, that task and its chain of coroutines were
a fifth of each poll's objects, which the cyclic collector walks again and again. Every request's
scope carries the connection's :class:`~reversehub.core.connection.OnLost`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from reversehub.core.connection import ON_LOST, OnLost


class CoalescingTransport(asyncio.Transport):
    """A transport that gathers writes until the loop's next turn (or ``limit`` bytes)."""

    __slots__ = ("_transport", "_loop", "_held", "_size", "_limit")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, limit: int = HIGH_WATER_LIMIT):
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] = []
        self._size = 0
        self._limit = limit

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        held = self._held
        if not held:
            if len(data) >= self._limit:
                self._transport.write(data)
                return
            self._loop.call_soon(self.flush)
        # Held past this call, so a mutable buffer the caller may reuse is copied.
        held.append(data if type(data) is bytes else bytes(data))
        self._size += len(data)
        if self._size >= self._limit:
            self.flush()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def flush(self) -> None:
        """Write what is held now (a no-op when nothing is, so a stale scheduled call is harmless)."""
        held = self._held
        if not held:
            return
        self._held = []
        self._size = 0
        if self._transport.is_closing():
            return  # the connection is gone (or going): the real transport would drop it too
        if len(held) == 1:
            self._transport.write(held[0])
        else:
            self._transport.writelines(held)

    def get_write_buffer_size(self) -> int:
        return self._size + self._transport.get_write_buffer_size()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = []
        self._size = 0
        self._transport.abort()

    def drop(self) -> None:
        """The connection is lost: nothing held can be sent any more."""
        self._held = []
        self._size = 0

    # Everything else is the real transport's.
    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        self._transport.resume_reading()

    def is_reading(self) -> bool:
        return self._transport.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._transport.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._transport.get_protocol()

    def can_write_eof(self) -> bool:
        return self._transport.can_write_eof()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._transport.set_write_buffer_limits(high, low)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._transport.get_write_buffer_limits()


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's ``HttpToolsProtocol`` over a :class:`CoalescingTransport` (``Config(http=...)``),
    with an :class:`OnLost` in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.on_lost = OnLost()
        super().connection_made(CoalescingTransport(transport, self.loop))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope[ON_LOST] = self.on_lost  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The whole body is in: read on. A lost connection shows only as EOF, which a transport
        # paused by a large body never reads, so a request that waits once its body is in (a
        # relayed request waiting for its reply) would not hear that its requester is gone. A
        # pipelined request pauses reading again.
        if not self.parser.should_upgrade():
            self.flow.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        transport = self.transport
        if isinstance(transport, CoalescingTransport):
            transport.drop()
        super().connection_lost(exc)
        self.on_lost.fire()
