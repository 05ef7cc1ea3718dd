"""``reversehub serve`` with its SQLite database on a disk that fills up (issue 13, M8), over real sockets.

While the disk is full, a publish and a registration are answered 503 with ``Retry-After`` (not
500, not 2xx), ``/healthz`` stays 200 and ``/readyz`` says 503; once there is room, they succeed
again. The server's log names the fault, never a statement's parameters (the published body here).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.disks import small_disk
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

TOPIC = "http://127.0.0.1:9/feed"
SECRET_BODY = b"body-7d41c9e2" * 4096  # 52 KiB: more than the room a full disk leaves the database


async def test_serve_on_a_full_disk_answers_503_and_recovers(tmp_path: Path, _template_db: Path) -> None:
    with small_disk(tmp_path / "disk") as disk:
        database = disk.mount / "hub.db"
        shutil.copyfile(_template_db, database)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        command = [sys.executable, "-m", "reversehub", "serve", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--database-url", f"sqlite:///{database}"]
        log_path = tmp_path / "server.log"
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.getcwd()}
            )
            try:
                async with httpx.AsyncClient(base_url=base, timeout=10) as http:

                    async def up() -> bool:
                        try:
                            return (await http.get("/healthz")).status_code == 200
                        except httpx.HTTPError:
                            return False

                    await wait_for(up, timeout=60, interval=0.1)

                    async def publish() -> httpx.Response:
                        headers = {"Content-Type": "text/plain"}
                        return await http.post(
                            "/publish", params={"hub.topic": TOPIC}, content=SECRET_BODY, headers=headers
                        )

                    async def register() -> httpx.Response:
                        return await http.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})

                    assert (await publish()).status_code == 204
                    assert (await http.get("/readyz")).status_code == 200

                    disk.fill()
                    for answer in (await publish(), await register()):
                        assert answer.status_code == 503, answer.text
                        assert int(answer.headers["Retry-After"]) > 0 and "storage unavailable" in answer.text
                    assert (await http.get("/healthz")).status_code == 200
                    assert (await http.get("/readyz")).status_code == 503

                    disk.free()
                    assert (await publish()).status_code == 204
                    assert (await register()).status_code == 201
            finally:
                server.terminate()
                server.wait(timeout=30)
    text = log_path.read_text(errors="replace")
    assert "storage unavailable" in text
    assert "body-7d41c9e2" not in text
