"""What the dashboard shows and does: read-only snapshots of relay and hub state, and four actions.

Reads are plain ``select()``s on the hub's tables and the relay's own ``status()``; nothing here
holds a session longer than one query. The actions use the relay's and hub's methods where they
exist (deleting a registration goes through :meth:`relay.service.Relay.delete`, so its polls end
with 410 and its queued requests are withdrawn). The hub has no admin methods, so delivery and
subscription actions are single guarded UPDATE/DELETE statements on its outbox rows followed by
the hub's own wake-up (a message on ``hub.work``: every process's outbox workers look again). A
delivery that a worker has claimed (in flight) is refused with :class:`ActionError`: the worker's
outcome would overwrite the change.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, func, or_, select, update

from hub.models import Delivery, Subscription
from hub.service import WORK
from relay.errors import RelayError
from relay.queue import queue_key
from relay.registry import private_cap
from reversehub.core.services import Services

LIMIT = 200  # rows per table: the dashboard is a view of what needs attention, not an export


class ActionError(RuntimeError):
    """An action that cannot be done on the item as it is now (e.g. retry a delivery in flight)."""


async def snapshot(app_state: Any) -> dict[str, Any]:
    services: Services = app_state.services
    return {
        "registrations": await registrations(app_state.relay, services),
        "subscriptions": await subscriptions(services),
        "deliveries": await deliveries(services),
    }


async def registrations(relay: Any, services: Services) -> list[dict[str, Any]]:
    status = await relay.status()
    now = time.time()
    return [
        {
            "name": n["name"],
            "pollers": n["pollers_waiting_here"],  # polls held by this process
            "queued": await services.broker.length(queue_key(n["name"])),
            "lease_seconds": n["lease"],
            "expires_at": now + n["expires_in"],
        }
        for n in status["names"][:LIMIT]
    ]


async def subscriptions(services: Services) -> list[dict[str, Any]]:
    pending = (
        select(Delivery.subscription_id, func.count().label("n"))
        .where(Delivery.state == "pending")
        .group_by(Delivery.subscription_id)
        .subquery()
    )
    query = (
        select(Subscription, func.coalesce(pending.c.n, 0))
        .outerjoin(pending, pending.c.subscription_id == Subscription.id)
        .order_by(Subscription.topic, Subscription.callback)
        .limit(LIMIT)
    )
    async with services.sessions() as s:
        rows = (await s.execute(query)).all()
    return [
        {
            "id": sub.id,
            "topic": sub.topic,
            "callback": sub.callback,
            "state": sub.state,
            "expires_at": sub.expires_at,
            "pending": n,
            "failed": sub.failed,
            "last_failure": sub.last_failure,
        }
        for sub, n in rows
    ]


async def deliveries(services: Services) -> list[dict[str, Any]]:
    """Pending (waiting, retrying or in flight) and failed deliveries, the most urgent first."""
    now = time.time()
    query = (
        select(Delivery, Subscription.topic, Subscription.callback)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.state.in_(("pending", "failed")))
        .order_by(Delivery.state.desc(), Delivery.next_attempt_at)
        .limit(LIMIT)
    )
    async with services.sessions() as s:
        rows = (await s.execute(query)).all()
    out = []
    for d, topic, callback in rows:
        in_flight = d.state == "pending" and d.claimed_until is not None and d.claimed_until > now
        state = "in flight" if in_flight else "retrying" if d.state == "pending" and d.attempts else d.state
        out.append(
            {
                "id": d.id,
                "topic": topic,
                "callback": callback,
                "state": state,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at if d.state == "pending" else None,
                "last_status": d.last_status,
                "last_error": d.last_error,
            }
        )
    return out


# Actions: True if done, False if there is no such item ---------------------------------------
def _not_claimed(now: float) -> Any:
    return or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now)


async def _change_delivery(
    app_state: Any, key: int | str, values: dict[str, Any], states: tuple[str, ...], *, active_only: bool = False
) -> bool:
    if not isinstance(key, int):
        return False
    services: Services = app_state.services
    now = time.time()
    async with services.sessions.begin() as s:
        current = (await s.execute(select(Delivery.state, Delivery.claimed_until).where(Delivery.id == key))).first()
        if current is None:
            return False
        where = [Delivery.id == key, Delivery.state.in_(states), _not_claimed(now)]
        if active_only:  # the outbox does not look at the subscription's state when it sends
            where.append(Delivery.subscription_id.in_(select(Subscription.id).where(Subscription.state == "active")))
        done = await s.execute(update(Delivery).where(*where).values(**values).returning(Delivery.id))
        if done.first() is None:
            state, claimed_until = current
            if state == "pending" and claimed_until is not None and claimed_until >= now:
                raise ActionError("the delivery is in flight right now; try again in a moment")
            if state in states:
                raise ActionError("the subscription is no longer active")
            raise ActionError(f"the delivery is {state}")
    return True


async def retry_delivery(app_state: Any, key: int | str) -> bool:
    """Attempt a pending (retrying) or failed delivery now; a failed one becomes pending again."""
    values = {"state": "pending", "next_attempt_at": time.time(), "finished_at": None, "claim_token": None}
    if not await _change_delivery(app_state, key, values, ("pending", "failed"), active_only=True):
        return False
    await app_state.services.broker.publish(WORK, b"dashboard retry")
    return True


async def cancel_delivery(app_state: Any, key: int | str) -> bool:
    now = time.time()
    values = {"state": "cancelled", "finished_at": now, "last_error": "cancelled from the dashboard"}
    return await _change_delivery(app_state, key, values, ("pending", "failed"))


async def delete_subscription(app_state: Any, key: int | str) -> bool:
    """Remove the subscription and its outbox rows: nothing more is delivered to it."""
    if not isinstance(key, int):
        return False
    async with app_state.services.sessions.begin() as s:
        await s.execute(delete(Delivery).where(Delivery.subscription_id == key))
        return (
            await s.execute(delete(Subscription).where(Subscription.id == key).returning(Subscription.id))
        ).first() is not None


async def delete_registration(app_state: Any, key: int | str) -> bool:
    relay = app_state.relay
    reg = await relay.lookup(str(key).lower())
    if reg is None:
        return False
    try:
        await relay.delete(private_cap(reg))
    except RelayError:
        return False  # deleted meanwhile
    return True
