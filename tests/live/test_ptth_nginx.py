"""PTTH through nginx, configured as docs/ptth.md says: both handshakes pass the proxy, and the
turned-around connection carries requests both ways."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.live.test_ptth import DRAFT, Server, _ready, _start, _stop, handshake
from tests.relay.helpers import links
from tests.support import free_port, unavailable

pytestmark = [pytest.mark.anyio, pytest.mark.live]

DOCS = Path(__file__).resolve().parents[2] / "docs" / "ptth.md"


def _documented_location() -> str:
    """The nginx ``location`` block of docs/ptth.md, as written there."""
    block = re.search(r"```nginx\n(.*?)```", DOCS.read_text(), re.S)
    assert block is not None
    return "\n".join(line.strip() for line in block.group(1).splitlines())


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Server]:
    server = _start(tmp_path)
    try:
        yield server
    finally:
        _stop(server)


@pytest.fixture
def nginx(tmp_path: Path, upstream: Server) -> Iterator[int]:
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if binary is None:
        unavailable("nginx not found (apt-get install nginx-light)")
    port = free_port()
    location = _documented_location().replace("127.0.0.1:8000", f"127.0.0.1:{upstream.port}")
    temp = "".join(
        f"{kind}_temp_path {tmp_path}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"""daemon off;
master_process off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/nginx-error.log info;
events {{ worker_connections 64; }}
http {{
access_log off;
{temp}
server {{
listen 127.0.0.1:{port};
{location}
location / {{
proxy_pass http://127.0.0.1:{upstream.port};
proxy_http_version 1.1;
proxy_set_header Host $host;
}}
}}
}}
"""
    )
    proc = subprocess.Popen([binary, "-p", str(tmp_path), "-e", f"{tmp_path}/nginx-error.log", "-c", str(conf)])
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        print((tmp_path / "nginx-error.log").read_text(errors="replace")[-3000:])


async def test_both_handshakes_and_requests_pass_nginx_as_documented(upstream, nginx):
    await _ready(upstream)
    proxy = Server(f"http://127.0.0.1:{nginx}", nginx, upstream.log, upstream.popen)

    await _ready(proxy)  # through nginx
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(proxy.base + "/reversehttp", data={"name": "behindnginx", "token": "t"})
        assert r.status_code == 201, (r.status_code, r.text)
        path = httpx.URL(links(r)["first"]).raw_path.decode()
        legacy = (
            b"POST {path} HTTP/1.1\r\nHost: h\r\nUpgrade: PTTH/1.0\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"
        )
        for form in (DRAFT, legacy):
            backend = await handshake(proxy, path, form)
            assert backend.status_line == b"HTTP/1.1 101 Switching Protocols", backend.head
            requester = asyncio.ensure_future(client.get(proxy.base + "/relay/behindnginx/via"))
            request = await backend.request()
            assert request.startswith(b"GET /relay/behindnginx/via HTTP/1.1\r\n")
            backend.respond(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnginx")
            assert (await requester).text == "nginx"
            await backend.close()
