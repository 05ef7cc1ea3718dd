"""Row states (hub.models.SubscriptionState, DeliveryState) through the store's functions, read back
as the strings the columns hold: existing databases keep their rows, no migration."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from hub import store
from hub.models import DeliveryState, SubscriptionState
from reversehub.core import db
from tests.hub.conftest import SUB

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/states"


@pytest.fixture
async def sessions(database_url):
    engine = db.create_engine(database_url)
    yield db.sessionmaker(engine)
    await engine.dispose()


async def raw_states(sessions, table: str) -> list[str]:
    async with sessions() as s:
        return list((await s.execute(text(f"SELECT state FROM {table} ORDER BY id"))).scalars())


def test_state_values_are_the_stored_strings():
    # Renaming a value would strand every row written before: that takes a migration, not an edit.
    assert {s.value for s in SubscriptionState} == {"active", "expired", "unsubscribed", "gone"}
    assert {s.value for s in DeliveryState} == {"pending", "delivered", "failed", "cancelled"}


async def test_a_delivery_and_its_subscription_through_their_states(sessions):
    now = time.time()
    gone, ends, lapses = (f"{SUB}/{name}" for name in ("gone", "ends", "lapses"))
    for callback in (gone, ends):
        await store.activate(sessions, TOPIC, callback, None, 600, now)
    await store.activate(sessions, TOPIC, lapses, None, 1, now - 10)  # its lease ran out
    async with store.writing(sessions) as s:
        assert (await store.enqueue(s, TOPIC, "text/plain", b"one", now)).deliveries == 2
    assert await raw_states(sessions, "hub_deliveries") == ["pending", "pending"]

    claimed = {c.callback: c for c in await store.claim(sessions, 10, 30.0)}
    await store.record(
        sessions,
        [
            store.Outcome(claimed[gone].id, claimed[gone].subscription_id, claimed[gone].token, "gone", 410, "gone"),
            store.Outcome(claimed[ends].id, claimed[ends].subscription_id, claimed[ends].token, "delivered", 204, None),
        ],
    )
    async with sessions() as s:
        states = {id_: state for id_, state in await s.execute(text("SELECT id, state FROM hub_deliveries"))}
    assert states == {claimed[gone].id: "cancelled", claimed[ends].id: "delivered"}
    by_callback = {c: (await store.find(sessions, TOPIC, c)) for c in (gone, ends, lapses)}
    assert by_callback[gone].state == SubscriptionState.GONE == "gone"
    assert by_callback[ends].state == SubscriptionState.ACTIVE

    async with store.writing(sessions) as s:
        await store.enqueue(s, TOPIC, "text/plain", b"two", time.time())
    assert await store.deactivate(sessions, TOPIC, ends, SubscriptionState.UNSUBSCRIBED)
    assert await store.expire_leases(sessions, time.time()) == 1
    assert {c: (await store.find(sessions, TOPIC, c)).state for c in (gone, ends, lapses)} == {
        gone: "gone",
        ends: "unsubscribed",
        lapses: "expired",
    }
    assert await raw_states(sessions, "hub_subscriptions") == ["gone", "unsubscribed", "expired"]
    assert sorted(await raw_states(sessions, "hub_deliveries")) == ["cancelled", "cancelled", "delivered"]
    assert await store.pending_count(sessions) == 0


async def test_a_claim_skips_the_origins_it_is_told_to_and_only_those(sessions):
    """Outbox.claim_room: the hosts saturated in a worker are skipped in SQL. An origin is matched
    whole: ``http://h.test:80`` does not skip ``http://h.test:8080``, nor a ``_`` or ``%`` in it
    anything but itself."""
    now = time.time()
    callbacks = [
        "http://busy.test:80/a",
        "http://busy.test:80?b",
        "http://busy.test:80",
        "http://busy.test:8080/c",
        "http://b_sy.test/d",
        "http://bxsy.test/e",
        "http://free.test/f",
    ]
    for callback in callbacks:
        await store.activate(sessions, TOPIC, callback, None, 600, now)
    async with store.writing(sessions) as s:
        await store.enqueue(s, TOPIC, "text/plain", b"one", now)
    skip = ["http://busy.test:80", "http://b_sy.test"]
    claimed = await store.claim(sessions, 10, 30.0, skip_origins=skip)
    assert sorted(c.callback for c in claimed) == [
        "http://busy.test:8080/c",
        "http://bxsy.test/e",
        "http://free.test/f",
    ]
    rest = await store.claim(sessions, 10, 30.0)  # skipped, not taken: due for whoever can send them
    assert sorted(c.callback for c in rest) == sorted(set(callbacks) - {c.callback for c in claimed})
