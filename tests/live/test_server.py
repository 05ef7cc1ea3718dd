"""``reversehub serve``'s server class, run in-process on a real socket."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

import anyio
import httpx
import pytest

from reversehub.server.app import create_app
from reversehub.server.serve import GC_THRESHOLDS, DrainingServer, config_for
from tests.support import bound_socket, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]


@asynccontextmanager
async def served(settings) -> AsyncIterator[tuple[DrainingServer, int]]:
    """``reversehub serve``'s server in this process on a real socket; the process's GC state
    (DrainingServer.startup freezes and sets thresholds) is restored afterwards."""
    sock = bound_socket()
    port = sock.getsockname()[1]
    app = create_app(replace(settings, public_url=f"http://127.0.0.1:{port}", port=port))
    server = DrainingServer(config_for(app, replace(settings, port=port)))
    thresholds = gc.get_threshold()
    gc.unfreeze()
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            await wait_for(lambda: server.started, timeout=20)
            try:
                yield server, port
            finally:
                server.should_exit = True
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sock.close()


async def test_startup_freezes_what_lives_as_long_as_the_process(settings):
    """After startup a full collection no longer walks the modules and the app (gc.freeze), and
    request objects get the chance to die young."""
    async with served(settings) as (_, port):
        assert gc.get_freeze_count() > 10_000
        assert gc.get_threshold() == GC_THRESHOLDS
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_an_upgrade_request_is_answered_as_plain_http_without_a_websocket_hint(settings):
    """No endpoint speaks WebSocket (ws="none"): an upgrade request gets its plain HTTP answer,
    and the log does not tell the operator to install a WebSocket library."""
    records = Records()
    upgrade = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    async with served(settings) as (_, port), httpx.AsyncClient() as client:
        # Only now: uvicorn's logging setup (in Config) drops the handlers its loggers had.
        logging.getLogger("uvicorn.error").addHandler(records)
        try:
            response = await client.get(f"http://127.0.0.1:{port}/healthz", headers=upgrade)
        finally:
            logging.getLogger("uvicorn.error").removeHandler(records)
    assert response.status_code == 200
    assert "Unsupported upgrade request." in records.messages  # uvicorn saw it, and logged that
    assert not [m for m in records.messages if "WebSocket library" in m]


# Packages a server on embedded SQLite has no use for: no endpoint speaks WebSocket (uvicorn's
# ws="auto" would load one), a child process migrates (db.migrate), feeds are parsed only once
# one is fetched, and the Redis and PostgreSQL drivers only when configured.
UNUSED = {"websockets", "wsproto", "alembic", "mako", "feedparser", "redis", "asyncpg"}


def test_a_serving_process_leaves_what_it_does_not_use_unimported(tmp_path):
    """``reversehub serve``, once started (migrated, listening), has imported none of UNUSED:
    each would stay in the process's memory for its whole life (bench/memory.py)."""
    probe = textwrap.dedent(
        """
        import sys
        from reversehub.server import cli, serve as server

        class Probe(server.DrainingServer):
            async def startup(self, sockets=None):
                await super().startup(sockets)
                print(" ".join(sorted({name.partition(".")[0] for name in sys.modules})), flush=True)
                self.should_exit = True

        server.DrainingServer = Probe
        cli.main(["serve", "--host", "127.0.0.1", "--port", "0", "--database-url", sys.argv[1]])
        """
    )
    url = f"sqlite:///{tmp_path / 'hub.db'}"
    out = subprocess.run([sys.executable, "-c", probe, url], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split())
    assert {"reversehub", "hub", "relay", "uvicorn", "sqlalchemy"} <= loaded  # the probe saw a started server
    assert sorted(UNUSED & loaded) == []
