"""``reversehub serve``'s server class, run in-process on a real socket."""

from __future__ import annotations

import gc
from dataclasses import replace

import anyio
import httpx
import pytest

from reversehub.app import create_app
from reversehub.server import GC_THRESHOLDS, DrainingServer, config_for
from tests.support import bound_socket, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]


async def test_startup_freezes_what_lives_as_long_as_the_process(settings):
    """After startup a full collection no longer walks the modules and the app (gc.freeze), and
    request objects get the chance to die young."""
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
                assert gc.get_freeze_count() > 10_000
                assert gc.get_threshold() == GC_THRESHOLDS
                async with httpx.AsyncClient() as client:
                    assert (await client.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            finally:
                server.should_exit = True
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
        sock.close()
