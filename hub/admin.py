"""What an operator may see and do in the hub: snapshots of subscriptions and deliveries, and the
actions the dashboard offers (retry or cancel a delivery, delete a subscription).

The hub owns these rows, so the changes are made here and nowhere else. Each action is one guarded
statement: a delivery that an outbox worker has claimed (in flight) is refused with
:class:`ActionError`, since the worker's outcome would overwrite the change. A retry wakes every
process's outbox workers with a message on ``hub.work``.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import delete, func, or_, select, update

from hub.models import Delivery, DeliveryState, Subscription, SubscriptionState
from hub.service import WORK
from reversehub.core.services import Services

__all__ = [
    "ActionError",
    "cancel_delivery",
    "deliveries",
    "delete_subscription",
    "retry_delivery",
    "subscriptions",
]


# The deliveries an operator may act on: waiting, retrying or in flight, and given up.
ATTENTION = (DeliveryState.PENDING, DeliveryState.FAILED)


class ActionError(RuntimeError):
    """An action that cannot be done on the item as it is now (e.g. retry a delivery in flight)."""


async def subscriptions(services: Services, limit: int) -> list[dict[str, Any]]:
    """Subscriptions by topic and callback, each with its count of pending deliveries."""
    pending = (
        select(Delivery.subscription_id, func.count().label("n"))
        .where(Delivery.state == DeliveryState.PENDING)
        .group_by(Delivery.subscription_id)
        .subquery()
    )
    query = (
        select(Subscription, func.coalesce(pending.c.n, 0))
        .outerjoin(pending, pending.c.subscription_id == Subscription.id)
        .order_by(Subscription.topic, Subscription.callback)
        .limit(limit)
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


async def deliveries(services: Services, limit: int) -> list[dict[str, Any]]:
    """Pending (waiting, retrying or in flight) and failed deliveries, the most urgent first; a
    pending one not in flight says why it waits (:func:`_waiting`)."""
    now = time.time()
    query = (
        select(Delivery, Subscription.topic, Subscription.callback, Subscription.callback_host)
        .join(Subscription, Subscription.id == Delivery.subscription_id)
        .where(Delivery.state.in_(ATTENTION))
        .order_by(Delivery.state.desc(), Delivery.next_attempt_at)
        .limit(limit)
    )
    pending = Delivery.state == DeliveryState.PENDING
    async with services.sessions() as s:
        rows = (await s.execute(query)).all()
        subscriptions = {d.subscription_id for d, *_ in rows if d.state == DeliveryState.PENDING}
        # The outbox sends a subscription's deliveries in sequence order: a later one waits for the first.
        first = dict(
            (
                await s.execute(
                    select(Delivery.subscription_id, func.min(Delivery.seq))
                    .where(pending, Delivery.subscription_id.in_(subscriptions))
                    .group_by(Delivery.subscription_id)
                )
            ).all()
        )
        claimed = (
            select(Subscription.callback_host, func.count())
            .join(Delivery, Delivery.subscription_id == Subscription.id)
            .where(pending, Delivery.claimed_until > now)
            .group_by(Subscription.callback_host)
        )
        busy = dict((await s.execute(claimed)).all())
    out = []
    for d, topic, callback, host in rows:
        is_pending = d.state == DeliveryState.PENDING
        in_flight = is_pending and d.claimed_until is not None and d.claimed_until > now
        state = "in flight" if in_flight else "retrying" if is_pending and d.attempts else str(d.state)
        waiting = None
        if is_pending:
            in_flight_to_host = 0 if services.is_own(callback) else busy.get(host, 0)
            waiting = _waiting(
                d, now, first.get(d.subscription_id, d.seq), host, in_flight_to_host, in_flight, services
            )
        out.append(
            {
                "id": d.id,
                "topic": topic,
                "callback": callback,
                "seq": d.seq,
                "state": state,
                "attempts": d.attempts,
                "next_attempt_at": d.next_attempt_at if is_pending else None,
                "waiting": waiting,
                "last_status": d.last_status,
                "last_error": d.last_error,
            }
        )
    return out


def _waiting(
    d: Delivery, now: float, first_seq: int, host: str, claimed: int, in_flight: bool, services: Services
) -> dict[str, Any] | None:
    """Why a pending delivery is not being sent: behind an earlier one of its subscription, backing
    off after a failure, its callback host at its connection cap, or due (the outbox will take it).

    A claimed ("in flight") delivery may still wait in its process for one of the host's
    ``delivery_per_host`` connections: with more claimed for the host than that, it says so.
    """
    per_host = services.settings.delivery_per_host
    saturated = {"reason": "host saturated", "host": host, "in_flight": claimed, "limit": per_host}
    if in_flight:
        return saturated if host and claimed > per_host else None
    if first_seq < d.seq:
        return {"reason": "behind", "seq": first_seq}
    if d.next_attempt_at > now:
        return {"reason": "backoff", "until": d.next_attempt_at}
    if host and claimed >= per_host:
        return saturated
    return {"reason": "due"}


# Actions: True if done, False if there is no such item ---------------------------------------
def _not_claimed(now: float) -> Any:
    return or_(Delivery.claimed_until.is_(None), Delivery.claimed_until < now)


async def _change_delivery(
    services: Services,
    key: int,
    values: dict[str, Any],
    states: tuple[DeliveryState, ...],
    *,
    active_only: bool = False,
) -> bool:
    now = time.time()
    async with services.sessions.begin() as s:
        current = (await s.execute(select(Delivery.state, Delivery.claimed_until).where(Delivery.id == key))).first()
        if current is None:
            return False
        where = [Delivery.id == key, Delivery.state.in_(states), _not_claimed(now)]
        if active_only:  # the outbox does not look at the subscription's state when it sends
            active = select(Subscription.id).where(Subscription.state == SubscriptionState.ACTIVE)
            where.append(Delivery.subscription_id.in_(active))
        done = await s.execute(update(Delivery).where(*where).values(**values).returning(Delivery.id))
        if done.first() is None:
            state, claimed_until = current
            if state == DeliveryState.PENDING and claimed_until is not None and claimed_until >= now:
                raise ActionError("the delivery is in flight right now; try again in a moment")
            if state in states:
                raise ActionError("the subscription is no longer active")
            raise ActionError(f"the delivery is {state}")
    return True


async def retry_delivery(services: Services, key: int) -> bool:
    """Attempt a pending (retrying) or failed delivery now; a failed one becomes pending again."""
    values = {"state": DeliveryState.PENDING, "next_attempt_at": time.time(), "finished_at": None, "claim_token": None}
    if not await _change_delivery(services, key, values, ATTENTION, active_only=True):
        return False
    await services.broker.publish(WORK, b"admin retry")
    return True


async def cancel_delivery(services: Services, key: int) -> bool:
    """Give up a pending or failed delivery: it is never attempted again."""
    values = {"state": DeliveryState.CANCELLED, "finished_at": time.time(), "last_error": "cancelled by the admin"}
    return await _change_delivery(services, key, values, ATTENTION)


async def delete_subscription(services: Services, key: int) -> bool:
    """Remove the subscription and its outbox rows: nothing more is delivered to it."""
    async with services.sessions.begin() as s:
        await s.execute(delete(Delivery).where(Delivery.subscription_id == key))
        removed = await s.execute(delete(Subscription).where(Subscription.id == key).returning(Subscription.id))
        return removed.first() is not None
