"""Claims belong to a live worker; the outbox survives its database failing under it.

A worker (one per Outbox) has a heartbeat row; its claims are claimable by anyone as soon as its
heartbeat is stale, in the claim query itself. Outcomes are written only for rows the worker still
holds. Every database call of the outbox backs off and retries: none ends the app.
"""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError

from hub import store
from tests.hub.conftest import SUB, subscribe
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/t"


async def publish(client, body=b"x", topic=TOPIC):
    r = await client.post(f"/publish?hub.topic={topic}", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 204


def _database_away() -> OperationalError:
    return OperationalError("SELECT ...", {}, Exception("database is away"))


def flaky(monkeypatch, name: str, failures: int) -> list[int]:
    """``store.<name>`` fails ``failures`` times as a database that went away would, then works."""
    real = getattr(store, name)
    calls = [0]

    async def call(*args, **kwargs):
        calls[0] += 1
        if calls[0] <= failures:
            raise _database_away()
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, name, call)
    return calls


@pytest.mark.parametrize("name", ["payloads", "claim", "record"])
async def test_a_database_error_in_the_outbox_is_retried_and_ends_nothing(make_hub, peer, monkeypatch, name):
    app, client = await make_hub()
    await subscribe(client, peer, TOPIC, SUB + "/cb")
    calls = flaky(monkeypatch, name, 2)
    await publish(client, b"1")
    await wait_for(lambda: calls[0] > 2, timeout=20)
    await publish(client, b"2")
    await wait_for(lambda: [d.body for d in peer.to("/cb")][-2:] == [b"1", b"2"], timeout=20)
    assert (await client.get("/healthz")).status_code == 200
