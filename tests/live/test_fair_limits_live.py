"""Fair limits over real sockets (issue 13, H4 and M1): two clients on loopback, 127.0.0.2 (the
attacker) and 127.0.0.3 (the honest one), with only 127.0.0.1 exempt. The attacker spends every
budget it can reach; a topic's publisher, a name's owner and a subscriber whose callback is on our
own relay still get through.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import anyio
import pytest

from reversehub.server.app import create_app
from tests.live.test_abuse import PollingSubscriber, _subscribed, client
from tests.support import bound_socket, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

ATTACKER, HONEST = "127.0.0.2", "127.0.0.3"
FLOOD = 8  # requests the attacker sends against each budget of 5


def served(settings, **overrides):
    sock = bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(
        replace(
            settings,
            public_url=base,
            poll_timeout=5.0,
            unavailable_timeout=5.0,
            rate_limit_window=3600.0,  # one window for the whole test
            rate_limit_exempt=("127.0.0.1/32",),
            **overrides,
        )
    )
    return app, sock, base


async def test_an_attacker_cannot_spend_the_budgets_of_a_publisher_an_owner_or_a_relay_subscriber(settings):
    app, sock, base = served(
        settings, rate_limit=("publish:topic=5", "registration:name=5", "subscribe:callback-host=5")
    )
    topic = f"{base}/sup"
    async with serve_live(app, sock=sock), client(base, ATTACKER) as attacker, client(base, HONEST) as honest:
        claim = {"name": "shop", "token": secrets.token_hex(8)}
        assert (await honest.post("/reversehttp", data=claim)).status_code == 201
        ping = {"hub.mode": "publish", "hub.url": topic}
        flood = {"registration": [], "publish": [], "subscribe": []}
        for i in range(FLOOD):
            guess = {"name": "shop", "token": f"guess{i}"}
            flood["registration"].append((await attacker.post("/reversehttp", data=guess)).status_code)
            flood["publish"].append((await attacker.post("/publish", data=ping)).status_code)
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{base}/relay/spam/{i}"}
            flood["subscribe"].append((await attacker.post("/hub", data=form)).status_code)
        refresh = await honest.post("/reversehttp", data=claim)
        publish = await honest.post("/publish", data=ping)
        form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{base}/relay/victim/cb"}
        subscribe = await honest.post("/hub", data=form)
    assert (refresh.status_code, publish.status_code, subscribe.status_code) == (204, 204, 202)
    assert flood == {
        "registration": [403] * 5 + [429] * 3,
        "publish": [204] * 5 + [429] * 3,
        "subscribe": [202] * 5 + [429] * 3,
    }


async def test_subscriptions_on_our_relay_are_capped_per_relay_name(settings):
    """One relay name's subscriptions cannot fill the cap of every callback on our relay."""
    app, sock, base = served(settings, max_subscriptions_per_callback_host=2)
    topic = f"{base}/sup"
    async with (
        serve_live(app, sock=sock),
        client(base, ATTACKER) as attacker_http,
        client(base, HONEST) as honest_http,
    ):
        attacker, victim = PollingSubscriber(attacker_http), PollingSubscriber(honest_http)
        spam_first, spam = await attacker.register("spam")
        victim_first, mine = await victim.register("victim")
        async with anyio.create_task_group() as tg:
            tg.start_soon(attacker.run, spam_first)
            tg.start_soon(victim.run, victim_first)
            for callback in (f"{spam}1", f"{spam}2"):
                form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
                assert (await attacker_http.post("/hub", data=form)).status_code == 202
                await wait_for(lambda callback=callback: _subscribed(app, topic, callback))
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{mine}cb"}
            assert (await honest_http.post("/hub", data=form)).status_code == 202
            await wait_for(lambda: _subscribed(app, topic, f"{mine}cb"))
            # The attacker's own name is at its cap: a third callback there is denied.
            third = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": f"{spam}3"}
            assert (await attacker_http.post("/hub", data=third)).status_code == 202
            with pytest.raises(AssertionError):
                await wait_for(lambda: _subscribed(app, topic, f"{spam}3"), timeout=2)
            tg.cancel_scope.cancel()
    assert attacker.errors == victim.errors == []
