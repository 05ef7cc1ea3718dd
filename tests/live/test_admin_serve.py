"""``reversehub serve`` with an admin: the dashboard on ``--admin-listen`` only, in one process and
under ``--workers N`` (sessions live in the broker, so every worker knows them)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.live.test_scaleout import REVERSEHUB, Proc, broker_url, database, launch, started  # noqa: F401
from tests.support import free_port, wait_for
from tests.test_dashboard import TOKEN

pytestmark = [pytest.mark.anyio, pytest.mark.live]

BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def _up(http: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes], log: Path) -> bool:
    assert proc.poll() is None, log.read_text(errors="replace")
    try:
        return (await http.get(url)).status_code < 500
    except httpx.TransportError:
        return False


async def test_serve_puts_the_dashboard_on_the_admin_listener_only(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    main, admin = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"
    log = tmp_path / "serve.log"
    command = [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/hub.db"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "REVERSEHUB_ADMIN_LISTEN": f"127.0.0.1:{admin_port}"}
    with log.open("wb") as out:
        proc = subprocess.Popen([*command, "--admin-token", TOKEN], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_for(lambda: _up(http, main + "/healthz", proc, log), timeout=30, interval=0.05)
            await wait_for(lambda: _up(http, admin + "/dashboard/login", proc, log), timeout=30, interval=0.05)
            assert f"dashboard at {admin}/" in log.read_text()
            for path in ("/dashboard/", "/dashboard/login", "/dashboard/api/state", "/dashboard/static/dashboard.js"):
                assert (await http.get(main + path, headers=BEARER)).status_code == 404, path
                assert (await http.get(admin + path, headers=BEARER)).status_code == 200, path
            # The main host's / is the landing page: it says where the dashboard is.
            assert (await http.get(admin + "/")).status_code == 200
            assert f'href="{admin}/"' in (await http.get(main + "/")).text
            # Which app answers is decided by the socket a request came in on, never by its headers.
            spoofed = {**BEARER, "Host": f"127.0.0.1:{admin_port}"}
            assert (await http.get(main + "/dashboard/api/state", headers=spoofed)).status_code == 404
            assert (await http.post(main + "/reversehttp", data={"name": "alice", "token": "t"})).status_code == 201
            assert (await http.get(main + "/reversehttp", headers=BEARER)).status_code == 404
            assert "alice" in (await http.get(admin + "/reversehttp", headers=BEARER)).text
            # The admin listener serves nothing of the relay or the hub.
            for path in ("/relay/alice/", "/healthz", "/hub", "/publish"):
                assert (await http.get(admin + path)).status_code in (404, 405), path
            session = (await http.post(admin + "/dashboard/login", data={"token": TOKEN})).json()["session"]
            signed_in = {"Authorization": f"Bearer {session}"}
            assert (await http.get(admin + "/dashboard/api/state", headers=signed_in)).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(20) == 0, log.read_text(errors="replace")
    assert session not in log.read_text() and TOKEN not in log.read_text()


async def test_without_an_admin_token_no_admin_listener_is_opened(tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    command = [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/hub.db"]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--admin-listen", f"127.0.0.1:{admin_port}"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_for(lambda: _up(http, f"http://127.0.0.1:{port}/healthz", proc, log), timeout=30, interval=0.05)
            with pytest.raises(httpx.ConnectError):
                await http.get(f"http://127.0.0.1:{admin_port}/")
            landing = await http.get(f"http://127.0.0.1:{port}/")
            assert landing.status_code == 200 and "Dashboard" in landing.text and "--admin-token" in landing.text
    finally:
        proc.terminate()
        proc.wait(20)


def test_a_bad_admin_listen_address_is_a_usage_error() -> None:
    out = subprocess.run([REVERSEHUB, "serve", "--admin-listen", "nowhere"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "HOST:PORT" in out.stderr


@pytest.mark.postgres
@pytest.mark.redis
async def test_sessions_work_across_workers(launch: Callable[..., Proc], database: str, broker_url: str) -> None:  # noqa: F811
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    flags = ["--database-url", database, "--redis-url", broker_url, "--workers", "2", "--admin-token", TOKEN]
    proc = launch(*flags, "--admin-listen", f"127.0.0.1:{admin_port}")
    async with httpx.AsyncClient(timeout=10) as http:
        await started(http, proc)
        assert (await http.get(proc.base + "/dashboard/api/state", headers=BEARER)).status_code == 404
        session = (await http.post(admin + "/dashboard/login", data={"token": TOKEN})).json()["session"]
        signed_in = {"Authorization": f"Bearer {session}"}
        for _ in range(40):  # a new connection each time: the kernel spreads them over the workers
            async with httpx.AsyncClient(timeout=10) as fresh:
                r = await fresh.get(admin + "/dashboard/api/state", headers=signed_in)
                assert r.status_code == 200
        assert (await http.post(admin + "/dashboard/logout", headers=signed_in)).status_code == 204
        for _ in range(10):
            async with httpx.AsyncClient(timeout=10) as fresh:
                assert (await fresh.get(admin + "/dashboard/api/state", headers=signed_in)).status_code == 401
