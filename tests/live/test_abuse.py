"""Under abuse (issue 6): one client floods the server and is rate limited, while a well-behaved
subscriber keeps getting its deliveries on time.

Bounded and loopback only: one uvicorn server on 127.0.0.1; the abusive client, the publisher and
the subscriber each bind their own loopback address (127.0.0.2-4), so the server tells them apart
as it would tell apart hosts. The abuser floods publishes and registrations for a few seconds (at
most ABUSE_MAX requests); meanwhile a publisher fat-pings a topic every 100 ms, and a subscriber
whose callback is its own relay URL long-polls the relay and answers each delivery.
"""

from __future__ import annotations

import logging
import re
import secrets
import statistics
import time
from dataclasses import replace
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import pytest

from relay import wire
from reversehub.server.app import create_app
from tests.support import bound_socket, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]
logger = logging.getLogger(__name__)

ABUSE_SECONDS = 3.0
ABUSE_MAX = 4000  # requests, whatever happens
ABUSERS = 16  # concurrent connections of the abusive client
PUBLISHES = 20
WINDOW = 1.0  # rate limit window (s): publish=30, registration=10 per client and window
ON_TIME = 2.0  # seconds from a publish to its delivery at the subscriber


def client(base: str, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=base, transport=transport, timeout=10)


class PollingSubscriber:
    """A relay endpoint written against the protocol only: poll, answer, poll again."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.received: dict[int, float] = {}  # publish number -> when it arrived
        self.verified = anyio.Event()
        self.errors: list[str] = []

    async def register(self, name: str) -> tuple[str, str]:
        r = await self.http.post("/reversehttp", data={"name": name, "token": secrets.token_hex(8), "lease": "600"})
        assert r.status_code == 201, r.text
        links = dict(
            (rel, url) for url, rel in re.findall(r'<([^>]+)>;\s*rel="(\w+)"', ", ".join(r.headers.get_list("link")))
        )
        return links["first"], links["related"]

    async def run(self, url: str) -> None:
        while True:
            r = await self.http.get(url)
            if r.status_code == 204:
                continue
            if r.status_code != 200:
                self.errors.append(f"poll answered {r.status_code}")
                return
            request = wire.parse_request(r.content)
            reply = self.answer(request)
            posted = await self.http.post(
                url, content=wire.serialize_response(reply), headers={"Content-Type": "message/http"}
            )
            if posted.status_code != 202:
                self.errors.append(f"reply answered {posted.status_code}")
            url = re.findall(r'<([^>]+)>;\s*rel="next"', r.headers["link"])[0]

    def answer(self, request: wire.HttpRequest) -> wire.HttpResponse:
        if request.method == "GET":  # WebSub intent verification: echo the challenge
            challenge = parse_qs(urlsplit(request.target).query).get("hub.challenge", [""])[0]
            self.verified.set()
            return wire.HttpResponse(200, [("Content-Type", "text/plain")], challenge.encode())
        self.received[int(request.body)] = time.monotonic()
        return wire.HttpResponse(204, [])


async def test_an_abusive_client_is_limited_while_a_subscriber_gets_its_deliveries_on_time(settings):
    sock = bound_socket()
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    app = create_app(
        replace(
            settings,
            public_url=base,
            poll_timeout=5.0,
            unavailable_timeout=5.0,
            rate_limit_window=WINDOW,
            rate_limit=("publish=30", "registration=10"),
            rate_limit_exempt=(),  # loopback is limited like any other network here
        )
    )
    topic = "http://pub.test/feed"
    abuse: dict[int | str, int] = {}
    published: dict[int, float] = {}
    publisher_statuses: list[int] = []

    async with (
        serve_live(app, sock=sock),
        client(base, "127.0.0.2") as abuser,
        client(base, "127.0.0.3") as publisher,
        client(base, "127.0.0.4") as sub_http,
    ):
        subscriber = PollingSubscriber(sub_http)
        first, callback = await subscriber.register("steady")
        async with anyio.create_task_group() as tg:
            tg.start_soon(subscriber.run, first)
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback}
            await wait_for(lambda: _accepted(publisher, form))
            with anyio.fail_after(10):
                await subscriber.verified.wait()
            await wait_for(lambda: _subscribed(app, topic, callback))

            async def flood() -> None:
                deadline = time.monotonic() + ABUSE_SECONDS
                while time.monotonic() < deadline and sum(abuse.values()) < ABUSE_MAX:
                    if sum(abuse.values()) % 2:
                        r = await abuser.post(
                            f"/publish?hub.topic=http://spam.test/{secrets.token_hex(4)}", content=b"spam"
                        )
                    else:
                        r = await abuser.post("/reversehttp", data={"name": "spam" + secrets.token_hex(4)})
                    abuse[r.status_code] = abuse.get(r.status_code, 0) + 1
                    if r.status_code == 429:
                        abuse["retry-after"] = abuse.get("retry-after", 0) + ("retry-after" in r.headers)

            async def publish() -> None:
                for n in range(PUBLISHES):
                    published[n] = time.monotonic()
                    r = await publisher.post(f"/publish?hub.topic={topic}", content=str(n).encode())
                    publisher_statuses.append(r.status_code)
                    await anyio.sleep(0.1)

            async with anyio.create_task_group() as load:
                for _ in range(ABUSERS):
                    load.start_soon(flood)
                load.start_soon(publish)
            await wait_for(lambda: len(subscriber.received) == PUBLISHES, timeout=ON_TIME + 5)
            assert (await publisher.get("/healthz")).status_code == 200
            tg.cancel_scope.cancel()

    lateness = [subscriber.received[n] - published[n] for n in range(PUBLISHES)]
    total = sum(v for k, v in abuse.items() if isinstance(k, int))
    logger.warning(
        "abuse: %d requests %s; subscriber: %d/%d deliveries, latency median %.0f ms, max %.0f ms",
        total,
        abuse,
        len(subscriber.received),
        PUBLISHES,
        statistics.median(lateness) * 1000,
        max(lateness) * 1000,
    )
    assert subscriber.errors == []
    assert set(publisher_statuses) <= {202, 204}, publisher_statuses
    # The flood met the limits: what got through is what the windows it spanned allow (30 + 10 a second).
    windows = ABUSE_SECONDS / WINDOW + 2
    assert abuse.get(429, 0) > 0 and total - abuse[429] <= windows * (30 + 10), abuse
    assert abuse["retry-after"] == abuse[429]
    assert not any(isinstance(k, int) and k >= 500 for k in abuse), abuse
    assert max(lateness) < ON_TIME, lateness


async def _accepted(http: httpx.AsyncClient, form: dict[str, str]) -> bool:
    return (await http.post("/hub", data=form)).status_code == 202


async def _subscribed(app, topic: str, callback: str) -> bool:
    from hub import store

    sub = await store.find(app.state.services.sessions, topic, callback)
    return sub is not None and sub.state == "active"
