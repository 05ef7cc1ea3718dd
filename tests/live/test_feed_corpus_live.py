"""The feed corpus through a running hub on real sockets: a publisher's web server serves each feed,
a subscriber's web server receives what the hub delivers. For every feed at once: subscribe (the
hub records version 1 as the baseline: nothing is delivered), change to version 2 and ping (the new
and the edited entry arrive, alone), change to version 3 and let the hub poll (the next new and
edited entry arrive), then poll again (nothing more arrives). Each delivery carries the topic's
Content-Type and parses as the topic's format in its declared encoding."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from reversehub.server.app import create_app
from tests.hub.corpus import CASES, check_delivery, titles
from tests.hub.proofs import status_params
from tests.live.test_mailbox_live import Server
from tests.support import bound_socket, live_settings, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

BY_NAME = {case.name: case for case in CASES}
SECRET = "corpus-secret"


def serve_has_poll_flags() -> bool:
    from reversehub.server.cli import serve

    return any(param.name == "poll_min_interval" for param in serve.params)


@pytest.fixture
async def hub_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A running hub whose polls come due within a second or two (after a ping, a topic waits for
    the maximum interval): ``reversehub serve`` in a process of its own where the CLI has
    ``--poll-min-interval``, else the same app served in this process with those settings."""
    if serve_has_poll_flags():
        server = Server(tmp_path, "--allow-private-networks", "--poll-min-interval", "0.5", "--poll-max-interval", "1")
        server.start()
        try:
            async with httpx.AsyncClient() as client:
                await server.ready(client)
            yield server.base
        finally:
            server.stop()
        return
    sock = bound_socket()
    settings = live_settings(
        database_url, sock.getsockname()[1], poll_min_interval=0.5, poll_max_interval=1.0, outbox_scan_interval=0.05
    )
    async with serve_live(create_app(settings), sock=sock) as url:
        yield url


class Publisher:
    """Serves each corpus feed at /NAME in its current version, counting fetches."""

    def __init__(self) -> None:
        self.step = dict.fromkeys(BY_NAME, 1)
        self.fetches = dict.fromkeys(BY_NAME, 0)
        self.app = Starlette(routes=[Route("/{name}", self.serve)])

    async def serve(self, request: Request) -> Response:
        case = BY_NAME[request.path_params["name"]]
        self.fetches[case.name] += 1
        return Response(
            case.document(self.step[case.name]), media_type=None, headers={"Content-Type": case.content_type}
        )


class Subscriber:
    """Echoes challenges and records every delivery by the callback path (the case name)."""

    def __init__(self) -> None:
        self.deliveries: dict[str, list[tuple[dict[str, str], bytes]]] = {name: [] for name in BY_NAME}
        self.app = Starlette(routes=[Route("/{name}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        self.deliveries[request.path_params["name"]].append((dict(request.headers), await request.body()))
        return Response(status_code=204)


async def settle(condition: Callable[[], bool], timeout: float = 20) -> None:
    """Wait until ``condition`` holds or ``timeout`` passes: the assertions below then say, feed by
    feed, what did not arrive."""
    with anyio.move_on_after(timeout):
        await wait_for(condition, timeout=timeout + 1, interval=0.1)


async def test_every_corpus_feed_delivers_each_entry_once(hub_url: str) -> None:
    pub, sub = Publisher(), Subscriber()
    async with serve_live(pub.app) as pub_url, serve_live(sub.app) as sub_url:
        async with httpx.AsyncClient(base_url=hub_url, timeout=30) as client:
            topics = {name: f"{pub_url}/{name}" for name in BY_NAME}

            async def subscribe(name: str) -> None:
                form = {
                    "hub.mode": "subscribe",
                    "hub.topic": topics[name],
                    "hub.callback": f"{sub_url}/{name}",
                    "hub.secret": SECRET,
                }
                assert (await client.post("/hub", data=form)).status_code == 202

            async def active(name: str) -> bool:
                params = status_params(SECRET, f"{sub_url}/{name}", topics[name])
                r = await client.get("/hub/status", params=params)
                return r.status_code == 200 and r.json()["state"] == "active"

            async def all_active() -> bool:
                return all([await active(name) for name in BY_NAME])

            async with anyio.create_task_group() as tg:
                for name in BY_NAME:
                    tg.start_soon(subscribe, name)
            await wait_for(all_active, timeout=60, interval=0.2)
            # The baseline (version 1) was fetched before the verification: nothing is delivered.
            assert all(pub.fetches[name] >= 1 for name in BY_NAME)

            # Change and ping.
            for name in BY_NAME:
                pub.step[name] = 2
                r = await client.post("/publish", data={"hub.mode": "publish", "hub.url": topics[name]})
                assert r.status_code in (202, 204)
            await settle(lambda: all(len(d) >= 1 for d in sub.deliveries.values()))

            # Change and let the hub poll.
            for name in BY_NAME:
                pub.step[name] = 3
            await settle(lambda: all(len(d) >= 2 for d in sub.deliveries.values()))

            # Unchanged: more polls of every feed deliver nothing. A delivery is queued while its
            # poll is processed and the outbox is woken for it at once, long before a third poll
            # comes due (the interval is at least 0.5 s).
            seen = dict(pub.fetches)
            await settle(lambda: all(pub.fetches[n] >= seen[n] + 3 for n in BY_NAME))

    failures = []
    for name, case in BY_NAME.items():
        got = sub.deliveries[name]
        if len(got) != 2:
            failures.append(f"{name}: {len(got)} deliveries, not 2")
            continue
        try:
            for (headers, body), step in zip(got, (2, 3), strict=True):
                assert headers["content-type"] == case.content_type
                assert titles(case, body) == list(case.expected[step - 1]), f"version {step}"
                check_delivery(case, case.document(step), body)
        except AssertionError as exc:
            failures.append(f"{name}: {str(exc).splitlines()[0]}")
    assert not failures, "\n".join(failures)
