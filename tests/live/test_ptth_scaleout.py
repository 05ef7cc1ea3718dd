"""PTTH with the Redis broker: a connection on one ``reversehub serve`` process serves requests that
arrive at another, and shares a name with a poller on a third party's process."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
import pytest

from relay.wire import HttpRequest
from tests.live.test_ptth import DRAFT, LEGACY, Backend, handshake
from tests.live.test_scaleout import (  # noqa: F401 (fixtures)
    FAST,
    Poller,
    Proc,
    broker_url,
    database,
    launch,
    path_of,
    register,
    started,
)

pytestmark = [pytest.mark.anyio, pytest.mark.live, pytest.mark.postgres, pytest.mark.redis]


async def _connect(proc: Proc, path: str, form: bytes) -> Backend:
    class Target:  # what tests.live.test_ptth.handshake needs of a server
        port = int(proc.base.rsplit(":", 1)[1])

    backend = await handshake(Target, path, form)  # type: ignore[arg-type]
    assert backend.status_line == b"HTTP/1.1 101 Switching Protocols", backend.head
    return backend


async def test_a_ptth_connection_on_one_process_serves_requests_arriving_at_another(
    launch: Callable[..., Proc],  # noqa: F811 (the fixtures imported above)
    database: str,  # noqa: F811
    broker_url: str,  # noqa: F811
) -> None:
    a = launch("--database-url", database, "--redis-url", broker_url, *FAST)
    b = launch("--database-url", database, "--redis-url", broker_url, "--public-url", a.base, *FAST)
    async with httpx.AsyncClient(timeout=30) as client:
        await started(client, a, b)
        urls = await register(client, a.base, "crossing")
        public = path_of(urls["related"])
        backends = [await _connect(b, path_of(urls["first"]), DRAFT), await _connect(b, path_of(urls["first"]), LEGACY)]
        by_backend = [0, 0]
        by_poller: list[str] = []

        async def serve(i: int) -> None:
            backend = backends[i]
            while True:
                request = await backend.request(timeout=60)
                by_backend[i] += 1
                target = request.split(b" ", 2)[1]
                backend.respond(
                    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(target) + 5, b"ptth " + target)
                )

        def poll(request: HttpRequest) -> tuple[int, bytes]:
            by_poller.append(request.target)
            return 200, b"poll " + request.target.encode()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve, 0)
            tg.start_soon(serve, 1)
            for i in range(10):  # only PTTH connections on b: everything arriving at a goes there
                r = await client.get(f"{a.base}{public}only/{i}")
                assert (r.status_code, r.text) == (200, f"ptth {public}only/{i}")
            assert by_backend[0] and by_backend[1], by_backend  # round-robin over both connections
            tg.start_soon(Poller(client, [a], path_of(urls["first"]), poll).run)

            async def call(i: int) -> None:
                r = await client.get(f"{a.base}{public}both/{i}")
                assert r.status_code == 200 and r.text.endswith(f"{public}both/{i}"), r.text

            for i in range(20):
                await call(i)
            tg.cancel_scope.cancel()
        assert by_poller, "the poller on a got none of the name's requests"
        assert sum(by_backend) > 10, "the PTTH connections on b got none once the poller came"
        for backend in backends:
            await backend.close()
