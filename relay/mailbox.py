"""Mailboxes: requests to a mailbox name that find no poller are stored, answered 202, delivered later.

A name registered with ``mailbox=1`` keeps today's live relaying while its application polls. When
no poller is there (``relay.seen.{name}`` absent, the rule of :meth:`relay.queue.Dispatcher.relay`),
or a live request is withdrawn for want of one (504 "no poller" otherwise), the request becomes a
:class:`relay.models.Mail` row, committed before its requester gets ``202 Accepted`` with a
``Location``: a capability URL (192 random bits) where ``GET`` answers 202 until the application has
replied, then the stored response.

Order: while a name has pending mail, new requests join it (202) instead of going live, so nothing
overtakes what arrived earlier; pollers are handed the oldest pending row first. A row handed to a
poller is "taken" until ``reply_timeout`` + ``unavailable_timeout`` have passed, then handed out again
(at least once: an application that crashed mid-request sees it again).

Pollers find mail in two ways. A poll of a mailbox name claims from the table before it waits, and a
request stored while a poller may be waiting pushes a *nudge* (an item with id :data:`NUDGE_ID`) into
the name's broker queue: the poller that takes it claims from the table. A poll marks the name seen
before it reads the table, and a requester reads the mark after its row is committed, so either the
poller finds the row or the requester finds the poller and nudges it.

Rows name the registration they were stored under (its ``created_at``): the name registered anew,
perhaps by someone else, never sees them, and the sweeper deletes them with expired ones.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time

import anyio
from sqlalchemy import and_, case, delete, func, or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from relay.errors import MailboxesFull, MailboxFull, Unavailable
from relay.models import Mail, Registration
from relay.queue import Item
from relay.registry import Reg
from relay.wire import HttpResponse, serialize_response
from reversehub.core.settings import Settings

logger = logging.getLogger(__name__)

MAIL_PREFIX = "mbox-"  # ids of items that are mail rows: their reply is stored, not published
NUDGE_ID = MAIL_PREFIX + "nudge"
NUDGE = Item(NUDGE_ID, "-", b"").pack()
PENDING, TAKEN, ANSWERED = "pending", "taken", "answered"
TOTAL_TTL = 1.0  # seconds a sum of all mailboxes' bytes is used for (see Mailbox._total)
CLAIM_ROUNDS = 10  # tries of a poll at rows other pollers keep winning before it waits instead


def location_hash(cap: str) -> str:
    return hashlib.sha256(cap.encode("ascii", "replace")).hexdigest()


def mail_id(item_id: str) -> int | None:
    """The row id of a mail item; None for a live item or a nudge."""
    if not item_id.startswith(MAIL_PREFIX) or item_id == NUDGE_ID:
        return None
    return int(item_id[len(MAIL_PREFIX) :])


def accepted(location: str) -> bytes:
    """The serialized 202 a requester gets for a stored request."""
    body = b"stored for the application; GET the Location for its response\n"
    headers = [("Location", location), ("Content-Type", "text/plain; charset=utf-8"), ("Retry-After", "5")]
    return serialize_response(HttpResponse(202, headers, body, "Accepted"))


def _failure(status: int, reason: str) -> bytes:
    return serialize_response(HttpResponse(status, [("Content-Type", "text/plain; charset=utf-8")], reason.encode()))


class Mailbox:
    """The mail rows of every mailbox name: store, claim, answer, fetch, prune."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessions = sessions
        self.settings = settings
        # A row handed to a poller is its until the requester would have had 504 "no reply".
        self.hold_seconds = settings.reply_timeout + settings.unavailable_timeout
        self._total_bytes = 0
        self._total_until = 0.0  # monotonic time until which _total_bytes is trusted

    async def _total(self, session: AsyncSession) -> int:
        """Bytes of all mailboxes: summed at most every :data:`TOTAL_TTL` seconds (a sum reads every
        row), counting what this process stored since. Other processes' stores in between may pass
        the bound by what they stored in that second."""
        now = time.monotonic()
        if now >= self._total_until:
            self._total_bytes = int(await session.scalar(select(func.coalesce(func.sum(Mail.size), 0))) or 0)
            self._total_until = now + TOTAL_TTL
        return self._total_bytes

    def _mine(self, reg: Reg) -> ColumnElement[bool]:
        return and_(Mail.name == reg.name, Mail.registered_at == reg.created_at)

    def _ready(self, now: float) -> ColumnElement[bool]:
        return or_(Mail.state == PENDING, and_(Mail.state == TAKEN, Mail.due_at < now))

    async def store(self, reg: Reg, item: Item) -> str:
        """Store ``item`` for ``reg``, committed before returning its Location capability.

        Bounds: the requests of the name still waiting for their application (count), the bytes of
        all its rows (requests waiting, responses kept for their Location), the bytes of all rows.
        :class:`MailboxFull` (507) past the name's count or bytes, :class:`MailboxesFull` (503) past
        the total; :class:`Unavailable` (503) when the database cannot take it.
        """
        settings = self.settings
        size = len(item.message)
        cap = secrets.token_urlsafe(24)
        try:
            # Shielded: the row is committed or not, never left half-written by a requester who left.
            with anyio.CancelScope(shield=True):
                async with self.sessions.begin() as session:
                    waiting = func.count(case((Mail.state != ANSWERED, 1)))
                    count, held = (
                        await session.execute(
                            select(waiting, func.coalesce(func.sum(Mail.size), 0)).where(self._mine(reg))
                        )
                    ).one()
                    if count >= settings.mailbox_max_per_name:
                        raise MailboxFull(f"this name's mailbox holds {count} waiting requests, its bound")
                    if held + size > settings.mailbox_max_bytes_per_name:
                        raise MailboxFull("this name's mailbox is at its bound of bytes")
                    if await self._total(session) + size > settings.mailbox_max_bytes:
                        raise MailboxesFull()
                    self._total_bytes += size
                    session.add(
                        Mail(
                            name=reg.name,
                            registered_at=reg.created_at,
                            location_hash=location_hash(cap),
                            client=item.client[:64],
                            message=item.message,
                            received_at=time.time(),
                            state=PENDING,
                            due_at=None,
                            response=None,
                            size=size,
                        )
                    )
        except SQLAlchemyError as exc:
            raise Unavailable("mailbox storage unavailable") from exc
        return cap

    async def backlog(self, reg: Reg) -> bool:
        """Whether ``reg`` has mail no poller has (a new request must not overtake it)."""
        async with self.sessions() as session:
            found = await session.scalar(select(Mail.id).where(self._mine(reg), self._ready(time.time())).limit(1))
        return found is not None

    async def claim(self, reg: Reg, limit: int) -> list[bytes]:
        """Take up to ``limit`` of ``reg``'s oldest ready rows for a poller, as packed items."""
        taken: list[bytes] = []
        with anyio.CancelScope(shield=True):
            for _ in range(CLAIM_ROUNDS):
                lost = await self._claim_round(reg, limit - len(taken), taken)
                if not lost or len(taken) >= limit:
                    break
        return taken

    async def _claim_round(self, reg: Reg, limit: int, taken: list[bytes]) -> bool:
        """One try at the oldest ready rows; True when another poller won some of them (then more
        ready rows may be left, and the caller tries again)."""
        now = time.time()
        lost = False
        async with self.sessions.begin() as session:
            rows = (
                await session.execute(
                    select(Mail.id, Mail.client, Mail.message, Mail.state, Mail.due_at)
                    .where(self._mine(reg), self._ready(now))
                    .order_by(Mail.id)
                    .limit(limit)
                )
            ).all()
            for row_id, client, message, state, due_at in rows:
                # Conditional: with several pollers (and processes) only one wins each row.
                same = Mail.due_at.is_(None) if due_at is None else Mail.due_at == due_at
                result = await session.execute(
                    update(Mail)
                    .where(Mail.id == row_id, Mail.state == state, same)
                    .values(state=TAKEN, due_at=now + self.hold_seconds)
                )
                if result.rowcount:  # type: ignore[attr-defined]
                    taken.append(Item(f"{MAIL_PREFIX}{row_id}", client, message).pack())
                else:
                    lost = True
        return lost

    async def answer(self, row_id: int, response: bytes) -> None:
        """The application's response to mail ``row_id``: kept for its Location until retention."""
        with anyio.CancelScope(shield=True):
            async with self.sessions.begin() as session:
                await session.execute(
                    update(Mail)
                    .where(Mail.id == row_id, Mail.state != ANSWERED)
                    .values(state=ANSWERED, response=response, message=b"", due_at=None, size=len(response))
                )

    async def fail(self, row_id: int, status: int, reason: str) -> None:
        """The relay answers mail ``row_id`` for the application (its reply was invalid: 502)."""
        await self.answer(row_id, _failure(status, reason + "\n"))

    async def fetch(self, cap: str) -> bytes | None:
        """``b""`` while the mail at Location ``cap`` waits, its response once answered; None: unknown."""
        async with self.sessions() as session:
            row = (
                await session.execute(select(Mail.state, Mail.response).where(Mail.location_hash == location_hash(cap)))
            ).first()
        if row is None:
            return None
        return row.response if row.state == ANSWERED and row.response is not None else b""

    async def forget(self, name: str) -> None:
        """The name's registration is gone: so is its mail."""
        async with self.sessions.begin() as session:
            await session.execute(delete(Mail).where(Mail.name == name))

    async def prune(self, now: float | None = None) -> int:
        """Delete mail past retention and mail of registrations that are gone; returns how many rows."""
        now = time.time() if now is None else now
        live = select(Registration.name).where(
            Registration.name == Mail.name, Registration.created_at == Mail.registered_at
        )
        async with self.sessions.begin() as session:
            result = await session.execute(
                delete(Mail).where(or_(Mail.received_at < now - self.settings.mailbox_retention, ~live.exists()))
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
