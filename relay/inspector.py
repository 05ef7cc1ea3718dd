"""The request inspector: every name's last requests and their answers, for the name's owner only.

Each relayed request (live, stored in a mailbox, or answered by the relay itself) becomes a
:class:`relay.models.Exchange` row: the request as ``message/http`` and the response, their
bodies cut at ``--inspector-max-body`` bytes, the last ``--inspector-requests`` kept per name. They
are shown only through the private URL (``GET {private_url}/requests``), a capability only the owner
holds, and a request kept whole can be sent again (``POST {private_url}/requests/{id}/replay``).

Rows are written in batches by :meth:`Inspector.run`, not one per relayed request: the relay's hot
path only appends to a bounded list, so a fan-out of thousands of deliveries costs a few
transactions, not one each (SQLite has one writer, and the outbox needs it). A listing writes this
process's batch first; another process's last fraction of a second may be missing from it.
Bodies are data the owner asked to keep, never logged.
"""

from __future__ import annotations

import base64
import logging
import time
from collections import deque
from typing import Any

import anyio
from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from relay.models import Exchange, Registration
from relay.ptth_connection import Response
from relay.registry import Reg
from reversehub.core.settings import Settings

logger = logging.getLogger(__name__)

FLUSH_INTERVAL = 0.5  # seconds between two batches
# Bytes of exchanges waiting for a batch (a database that is away must not grow it without end);
# past it the oldest are dropped.
MAX_BUFFERED_BYTES = 32 * 1024 * 1024


def _cut(data: bytes, limit: int, start: int = 0) -> tuple[bytes, bool]:
    """The message at ``data[start:]`` with its body cut at ``limit`` bytes (the head, bounded by
    the relay's header limits, is kept whole), and whether anything was cut."""
    end = data.find(b"\r\n\r\n", start)
    keep = (len(data) if end < 0 else end + 4) + limit
    return (data[start:keep], True) if len(data) > keep else (data[start:] if start else data, False)


def _body(data: bytes) -> dict[str, str]:
    try:
        return {"body": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body_base64": base64.b64encode(data).decode("ascii")}


def _message(raw: bytes | None) -> dict[str, Any] | None:
    """A stored message (possibly cut short) as JSON: its first line, headers and body; tolerant of
    a head cut in the middle."""
    if raw is None:
        return None
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [list(line.split(": ", 1)) for line in lines[1:] if ": " in line]
    return {"line": lines[0], "headers": headers, **_body(body)}


# What Inspector.record keeps of an exchange: its size, the registration, the time, the packed
# item and its first newline, the request cut short (None: the item's message whole, not cut), whether
# cut, the status, the outcome, the response (cut short), whether cut, the time taken.
_Recorded = tuple[int, Reg, float, bytes, int, bytes | None, bool, int, str, bytes | Response | None, bool, float]


class Inspector:
    """Recent exchanges per name: :meth:`record` on the hot path, rows written by :meth:`run`."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessions = sessions
        self.keep = settings.inspector_requests
        self.max_body = settings.inspector_max_body
        self._buffer: deque[_Recorded] = deque()
        self._buffered = 0  # bytes in _buffer
        self._lock = anyio.Lock()

    def record(
        self, reg: Reg, raw: bytes, status: int, outcome: str, response: bytes | Response | None, elapsed: float
    ) -> None:
        """Keep one exchange (``raw``: the packed item, relay.queue.Item; ``response``: serialized,
        parsed (a PTTH connection's), or None when the relay answered by itself). Only the kept bytes
        are copied; a parsed response is serialized by :meth:`flush`, and only if its row is kept."""
        if self.keep <= 0:
            return
        max_body = self.max_body
        newline = raw.index(b"\n")
        # Only a long message is cut (copied) here: a short one is held as it is, and what the row
        # keeps of it is made by flush(), for the rows it keeps (most of a busy name's are dropped).
        if len(raw) - newline - 1 > max_body:
            request: bytes | None
            request, cut = _cut(raw, max_body, newline + 1)
            size = len(request)
        else:
            request, cut, size = None, False, len(raw)
        reply: bytes | Response | None
        reply_cut = False
        if response is None:
            reply = None
        elif isinstance(response, Response):
            reply_cut = len(response.body) > max_body
            reply = response._replace(body=response.body[:max_body]) if reply_cut else response
            # The head is bounded by the header limits; counted roughly, as the bound needs no more.
            size += len(reply.body) + 64 * (len(reply.headers) + 1)
        else:
            reply, reply_cut = _cut(response, max_body) if len(response) > max_body else (response, False)
            size += len(reply)
        self._buffered += size
        while self._buffer and self._buffered > MAX_BUFFERED_BYTES:
            self._buffered -= self._buffer.popleft()[0]
        self._buffer.append(
            (size, reg, time.time(), raw, newline, request, cut, status, outcome, reply, reply_cut, elapsed)
        )

    @staticmethod
    def _row(recorded: _Recorded) -> dict[str, Any]:
        """The Exchange row of what :meth:`record` kept."""
        _, reg, at, raw, newline, request, cut, status, outcome, reply, reply_cut, elapsed = recorded
        return {
            "name": reg.name,
            "registered_at": reg.created_at,
            "at": at,
            "client": raw[:newline].partition(b" ")[2].decode("latin-1")[:64],
            "request": raw[newline + 1 :] if request is None else request,
            "request_truncated": cut,
            "status": status,
            "outcome": outcome[:32],
            "response": reply.serialized() if isinstance(reply, Response) else reply,
            "response_truncated": reply_cut,
            "duration_ms": round(elapsed * 1000, 3),
        }

    async def flush(self) -> None:
        """Write what was recorded here, then keep only the last ``keep`` rows of each name in it."""
        async with self._lock:
            if not self._buffer:
                return
            batch = list(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            # Only a name's last `keep` of the batch: the older ones would be deleted as they are written.
            counts: dict[str, int] = {}
            rows = []
            for recorded in reversed(batch):
                name = recorded[1].name
                seen = counts.get(name, 0)
                if seen < self.keep:
                    counts[name] = seen + 1
                    rows.append(self._row(recorded))
            rows.reverse()
            # Shielded: aiosqlite hangs on a statement cancelled half-way.
            with anyio.CancelScope(shield=True):
                async with self.sessions.begin() as session:
                    # One executemany, not ORM objects: thousands of rows a second on a busy relay.
                    await session.execute(insert(Exchange), rows)
                    for name in counts:
                        oldest_kept = (
                            select(Exchange.id)
                            .where(Exchange.name == name)
                            .order_by(Exchange.id.desc())
                            .offset(self.keep - 1)
                            .limit(1)
                            .scalar_subquery()
                        )
                        await session.execute(delete(Exchange).where(Exchange.name == name, Exchange.id < oldest_kept))

    async def run(self) -> None:
        while True:
            await anyio.sleep(FLUSH_INTERVAL)
            try:
                await self.flush()
            except Exception:
                logger.warning("could not write inspected requests; they are dropped", exc_info=True)

    async def listing(self, reg: Reg) -> list[Exchange]:
        """``reg``'s kept exchanges, newest first."""
        await self.flush()
        async with self.sessions() as session:
            rows = await session.scalars(
                select(Exchange)
                .where(Exchange.name == reg.name, Exchange.registered_at == reg.created_at)
                .order_by(Exchange.id.desc())
                .limit(max(self.keep, 0))
            )
            return list(rows.all())

    async def one(self, reg: Reg, exchange_id: int) -> Exchange | None:
        await self.flush()
        async with self.sessions() as session:
            row = await session.get(Exchange, exchange_id)
        if row is None or row.name != reg.name or row.registered_at != reg.created_at:
            return None
        return row

    async def forget(self, name: str) -> None:
        async with self.sessions.begin() as session:
            await session.execute(delete(Exchange).where(Exchange.name == name))

    async def prune(self) -> None:
        """Delete the exchanges of registrations that are gone."""
        live = select(Registration.name).where(
            Registration.name == Exchange.name, Registration.created_at == Exchange.registered_at
        )
        async with self.sessions.begin() as session:
            await session.execute(delete(Exchange).where(~live.exists()))


def describe(row: Exchange, replay_url: str) -> dict[str, Any]:
    """An exchange as the inspector's JSON shows it."""
    return {
        "id": row.id,
        "at": row.at,
        "client": row.client,
        "status": row.status,
        "outcome": row.outcome,
        "duration_ms": row.duration_ms,
        "request": _message(row.request),
        "request_truncated": row.request_truncated,
        "response": _message(row.response),
        "response_truncated": row.response_truncated,
        "replay": None if row.request_truncated else replay_url,
    }
