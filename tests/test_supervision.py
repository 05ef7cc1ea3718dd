"""No background worker can end the app (issue 14 item 6).

A loop that raises is logged and started again (reversehub.core.supervise.supervised); if the app's
background work ends all the same, every request is answered 503 and ``/healthz`` says so, until
``serve`` exits non-zero (tests/live/test_faults.py runs that over a real process).
"""

from __future__ import annotations

import logging

import anyio
import pytest

from hub.fetcher import Fetcher
from hub.outbox import Outbox
from hub.service import Hub
from hub.subscriptions import Verifier
from reversehub.core import supervise
from tests.hub.conftest import subscribe
from tests.hub.peers import Peer
from tests.support import wait_for

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/feed"
CALLBACK = "http://sub.test/cb"


async def test_a_failing_loop_is_started_again_after_a_backoff(caplog):
    runs = 0

    async def loop() -> None:
        nonlocal runs
        runs += 1
        if runs < 3:
            raise RuntimeError("boom")

    with anyio.fail_after(5):
        await supervise.supervised("the test loop", loop, base=0.01, cap=0.02)
    assert runs == 3
    assert caplog.text.count("the test loop failed; starting it again") == 2


async def test_cancellation_passes_through_a_supervised_loop():
    with anyio.move_on_after(0.05) as scope:
        await supervise.supervised("the test loop", anyio.sleep_forever)
    assert scope.cancelled_caught


@pytest.fixture
def fast_restarts(monkeypatch):
    monkeypatch.setattr(supervise.supervised, "__kwdefaults__", {"base": 0.01, "cap": 0.05})


def _fails_once(monkeypatch, cls, name: str) -> list[int]:
    original = getattr(cls, name)
    calls: list[int] = []

    async def run(self) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a worker's first run fails")
        await original(self)

    monkeypatch.setattr(cls, name, run)
    return calls


@pytest.mark.parametrize(
    "worker", [(Fetcher, "run"), (Verifier, "run"), (Outbox, "run")], ids=["fetcher", "verifier", "outbox"]
)
async def test_a_worker_that_fails_does_not_end_the_app(monkeypatch, fast_restarts, make_app, worker, caplog):
    """On main a failing worker ended the lifespan's task group: the app answered 503 "shutting
    down" to subscribes and had no outbox, while it still took publishes."""
    import httpx

    calls = _fails_once(monkeypatch, *worker)
    peer = Peer()
    _, client = await make_app(transport=httpx.ASGITransport(app=peer.app), trusted_networks=("0.0.0.0/0", "::/0"))
    await wait_for(lambda: len(calls) >= 2, timeout=10)
    assert "failed; starting it again" in caplog.text
    await subscribe(client, peer, TOPIC, CALLBACK)
    assert (await client.post(f"/publish?hub.topic={TOPIC}", content=b"x")).status_code == 204
    await wait_for(lambda: any(d.path == "/cb" for d in peer.deliveries), timeout=10)
    assert (await client.get("/healthz")).status_code == 200


async def test_background_work_that_ends_anyway_leaves_nothing_half_alive(monkeypatch, make_app, caplog):
    async def ends(self: Hub) -> None:
        return None

    monkeypatch.setattr(Hub, "run", ends)
    caplog.set_level(logging.CRITICAL)
    app, client = await make_app(trusted_networks=("0.0.0.0/0", "::/0"))
    await wait_for(lambda: app.failed is not None, timeout=5)
    assert "cannot go on" in caplog.text
    health = await client.get("/healthz")
    assert health.status_code == 503 and "failing" in health.text
    publish = await client.post(f"/publish?hub.topic={TOPIC}", content=b"x")
    assert publish.status_code == 503 and publish.headers["Retry-After"]
