"""Outbox workers: an identity per process with a heartbeat row, so a claim belongs to a live worker.

A worker renews ``heartbeat_at`` every ``outbox_heartbeat`` seconds while it runs. Once its
heartbeat is older than the staleness bound, anyone's claim query takes its claims over
(:func:`hub.store.deliveries.claim`); workers on the same node judge each other at once by their
process ids (:func:`judge_node`): a restart after a kill takes its predecessor's claims at start.
Heartbeats are written and judged with the database's clock: processes on several hosts must agree
on what "stale" means.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, Float, delete, exists, func, insert, literal, select, update
from sqlalchemy import cast as sql_cast
from sqlalchemy.engine import CursorResult
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.models import Delivery, DeliveryState, Worker
from hub.store._sql import dialect, writing


def node() -> str:
    """This process's node: where a process id names one process. The host name, the boot id (two
    hosts may share a host name, never a boot) and the PID namespace (containers of one host share
    its boot, never a PID namespace)."""
    parts = [socket.gethostname()]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip())
    except OSError:
        # Without a boot id a process id may name a process of another host: a node of its own,
        # so that no one judges this worker by its pid (its heartbeat alone tells).
        parts.append(secrets.token_hex(8))
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return "/".join(parts)[:255]


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this node (signal 0 tests for it and sends nothing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return True  # cannot tell: let the heartbeat judge it
    return True


def db_now(s: AsyncSession) -> ColumnElement[float]:
    """The database's clock in UNIX seconds, as SQL."""
    if dialect(s) == "postgresql":
        return sql_cast(func.extract("epoch", func.clock_timestamp()), Float)
    return sql_cast((func.julianday("now") - 2440587.5) * 86400.0, Float)


def dead_workers(s: AsyncSession, stale_seconds: float) -> Any:
    """The ids of workers whose heartbeat is older than ``stale_seconds``, as a subquery."""
    return select(Worker.id).where(Worker.heartbeat_at < db_now(s) - stale_seconds)


async def beat(sessions: async_sessionmaker[AsyncSession], worker: str, node_name: str, pid: int) -> None:
    """Renew ``worker``'s heartbeat; registers it if its row is missing (new, or judged dead and
    removed while the database was away from it: its claims were taken, its new ones hold)."""
    async with writing(sessions) as s:
        now = db_now(s)
        renewed = await s.execute(update(Worker).where(Worker.id == worker).values(heartbeat_at=now))
        if not cast("CursorResult[Any]", renewed).rowcount:
            await s.execute(insert(Worker).values(id=worker, node=node_name, pid=pid, started_at=now, heartbeat_at=now))


async def retire(sessions: async_sessionmaker[AsyncSession], worker: str) -> None:
    """A worker that stops cleanly removes its row, once its claims are given back."""
    async with writing(sessions) as s:
        await s.execute(delete(Worker).where(Worker.id == worker))


async def judge_node(
    sessions: async_sessionmaker[AsyncSession],
    node_name: str,
    me: str,
    alive: Callable[[int], bool] = pid_alive,
) -> list[str]:
    """Mark dead, at once, the workers of this node whose process is gone (a restart after a kill,
    a sibling of ``--workers`` killed): their claims need not wait out the staleness bound. Returns
    their ids. Reads only, unless one is gone: it runs at every heartbeat."""
    async with sessions() as s:
        rows = (
            await s.execute(
                select(Worker.id, Worker.pid).where(Worker.node == node_name, Worker.id != me, Worker.heartbeat_at > 0)
            )
        ).all()
    gone = [worker for worker, pid in rows if not alive(pid)]
    if gone:
        async with writing(sessions) as s:
            await s.execute(update(Worker).where(Worker.id.in_(gone)).values(heartbeat_at=literal(0.0)))
    return gone


@dataclass(frozen=True)
class DeadWorker:
    """A worker whose heartbeat is stale and that still holds claims."""

    id: str
    node: str
    pid: int
    silent_for: float  # seconds since its last heartbeat
    claims: int


async def dead(sessions: async_sessionmaker[AsyncSession], stale_seconds: float) -> list[DeadWorker]:
    """The dead workers that still hold claims; dead ones that hold none are removed."""
    async with sessions() as s:
        now = db_now(s)
        held = (
            select(func.count())
            .where(
                Delivery.claim_worker == Worker.id,
                Delivery.state == DeliveryState.PENDING,
                Delivery.claim_token.is_not(None),
            )
            .scalar_subquery()
        )
        rows = (
            await s.execute(
                select(Worker.id, Worker.node, Worker.pid, now - Worker.heartbeat_at, held).where(
                    Worker.heartbeat_at < now - stale_seconds
                )
            )
        ).all()
    empty = [row[0] for row in rows if not row[4]]
    if empty:
        async with writing(sessions) as s:
            # Again in the statement: a claim recorded meanwhile keeps its worker's row.
            await s.execute(
                delete(Worker).where(
                    Worker.id.in_(empty),
                    ~exists().where(
                        Delivery.claim_worker == Worker.id,
                        Delivery.claim_token.is_not(None),
                        Delivery.state == DeliveryState.PENDING,
                    ),
                )
            )
    return [DeadWorker(w, n, p, float(age), int(c)) for w, n, p, age, c in rows if c]
