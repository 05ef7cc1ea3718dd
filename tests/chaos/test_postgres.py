"""PostgreSQL stopped for 10 s under three processes mid fan-out (issue 14 items 6 and 7).

While the database is away, requests answer 503 (never 500, never held); when it is back every
process resumes by itself: nothing accepted is lost, every subscription answered 202 is stored, and
each process takes publishes again.
"""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from tests.chaos.figures import Receiver, judge, settle
from tests.chaos.processes import Postgres, Serve, logged
from tests.chaos.workload import active_subscriptions, fan_out, mid_fan_out, probing
from tests.support import wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

OUTAGE = 10.0  # issue 14: "stop PostgreSQL for 10 s mid fan-out"
# After the database is back: each process finds its pooled connections dead and opens new ones
# (a few seconds of backoff at most), its outbox finds the due rows at its next scan (2 s), and the
# deliveries that were in flight when the database went must be sent again: those whose outcome
# could not be recorded, and the claims of the outage. The fan-out's own rest takes a few seconds
# more on a loaded two-core machine; 20 s holds all of it.
RECOVERY_BOUND = 20.0


async def test_postgres_outage_mid_fan_out(
    cluster: list[Serve],
    database: str,
    postgres: Postgres,
    receiver: tuple[Receiver, str],
    client: httpx.AsyncClient,
) -> None:
    rcv, cb_base = receiver
    topic = "https://example.com/chaos/postgres"
    keys, accepted, tally = await fan_out(client, cluster, rcv, cb_base, database, topic)
    async with probing(client, cluster, topic, cb_base, subscribe_too=True) as prober:
        prober.phase = "outage"
        postgres.stop()
        at_fault = mid_fan_out(rcv)
        await anyio.sleep(OUTAGE)  # the fault itself
        postgres.start()
        back = time.monotonic()
        prober.phase = "after"
        await settle(rcv, keys, accepted, timeout=RECOVERY_BOUND)  # probes go on until the fan-out is through
    figures = await settle(rcv, keys, accepted + prober.accepted, timeout=1.0)

    async def stored() -> int:
        return await active_subscriptions(database, prober.side_topic)

    deadline = back + RECOVERY_BOUND
    while (side := await stored()) < len(prober.subscribed) and time.monotonic() < deadline:
        await anyio.sleep(0.2)
    echoed = [key for key in prober.subscribed if key in rcv.verified]
    outage = {kind: dict(v) for kind, v in prober.tally.counts.items() if kind.endswith(" outage")}
    after = {kind: dict(v) for kind, v in prober.tally.counts.items() if kind.endswith(" after")}
    tally.counts.update(prober.tally.counts)
    await judge(
        "PostgreSQL away 10 s mid fan-out (3 processes), from PostgreSQL back",
        figures,
        back,
        RECOVERY_BOUND,
        tally,
        database,
        at_fault=at_fault,
        probe_publishes_accepted=len(prober.accepted),
        subscriptions_answered_202=len(prober.subscribed),
        of_them_echoed=len(echoed),
        of_them_stored=side,
        logged=logged(*cluster),
    )
    # While it is away: 503 (a publish already past its commit may still answer 2xx), never anything else.
    assert outage["publish outage"].get("503"), outage
    for kind, outcomes in outage.items():
        assert set(outcomes) <= {"200", "202", "204", "503"}, (kind, outcomes)
    # Every process resumes by itself: alive, ready, taking publishes and subscriptions.
    assert all(p.alive() for p in cluster), [p.output()[-2000:] for p in cluster if not p.alive()]
    assert after["publish after"].get("204"), after
    # A subscriber answered 202 counts itself subscribed, all the more once it echoed the challenge.
    assert side >= len(echoed), f"{len(echoed) - side} subscriptions echoed the challenge, never stored"
    assert side == len(prober.subscribed), f"{len(prober.subscribed) - side} subscriptions answered 202 never stored"
    # /readyz may stay 503 a while after the last failure (it holds, so that a balancer does not
    # flap), but not past the bound.
    for proc in cluster:

        async def ready(proc: Serve = proc) -> bool:
            return (await client.get(proc.base + "/readyz", timeout=10)).status_code == 200

        await wait_for(ready, timeout=max(1.0, back + RECOVERY_BOUND - time.monotonic()), interval=0.2)
    ready_after = round(time.monotonic() - back, 1)
    print(f"[chaos] every process ready {ready_after} s after PostgreSQL was back")
