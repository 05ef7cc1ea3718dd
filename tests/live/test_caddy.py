"""The deployment recipe's Caddy configuration (deploy/Caddyfile), run by the real ``caddy`` in front of
a real ``reversehub serve``.

The Caddyfile is the shipped one, changed only through its variables: Caddy's internal CA instead of
ACME (``local_certs``), free ports, no admin endpoint, and ``localhost`` as both the main host and the
relay domain (``localhost`` resolves to loopback; a relay name ``NAME.localhost`` is reached by
connecting to 127.0.0.1 with the name in SNI and ``Host``). Caddy's root certificate, from its data
directory, is the only one trusted. Shown: a relay round trip over HTTPS through a host-based name,
whose certificate Caddy obtains on demand once reversehub says the name is registered (and refuses
for a name that is not); a hub subscribe and publish to that name; the client's own address reaching
reversehub through Caddy (a fat ping from an untrusted address is refused even when it claims
another); the landing page and the HTTP-to-HTTPS redirect.

Debian's ``caddy`` package provides the binary (.ci/run installs it). Missing, it skips locally and
fails in CI (CI=true), as Chromium does for the browser tests.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from clients.endpoint import Endpoint
from relay.wire import HttpRequest, HttpResponse
from tests.hub.proofs import status_params
from tests.live.test_scaleout import REVERSEHUB
from tests.support import free_port, unavailable, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

CADDYFILE = Path(__file__).resolve().parents[2] / "deploy" / "Caddyfile"
DOMAIN = "localhost"


@dataclass
class Deployment:
    https: int  # Caddy's HTTPS port
    http: int  # Caddy's HTTP port (redirects)
    root: Path  # Caddy's internal root certificate
    caddy_log: Path
    serve_log: Path

    @property
    def base(self) -> str:
        return f"https://{DOMAIN}:{self.https}"

    def trust(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.root))

    def client(self, **transport: object) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.AsyncHTTPTransport(verify=self.trust(), **transport),  # type: ignore[arg-type]
            timeout=15,
        )

    async def to_name(self, name: str, method: str, path: str, content: bytes = b"") -> httpx.Response:
        """A request to relay name ``name`` (``NAME.localhost``): connect to loopback, name it in SNI and Host.
        A fresh connection each time: a pooled one would keep the SNI of another name."""
        host = f"{name}.{DOMAIN}"
        async with self.client() as http:
            return await http.request(
                method,
                f"https://127.0.0.1:{self.https}{path}",
                content=content,
                headers={"Host": f"{host}:{self.https}", "Content-Type": "text/plain"},
                extensions={"sni_hostname": host},
            )


def _stop(proc: subprocess.Popen[bytes]) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return None
    return proc.returncode


@pytest.fixture
def caddy() -> str:
    found = shutil.which("caddy")
    if found is None:
        unavailable("caddy not found (apt-get install caddy)")
    assert found is not None
    return found


@pytest.fixture
async def deployment(caddy: str, tmp_path: Path) -> AsyncIterator[Deployment]:
    port, https, http_port = free_port(), free_port(), free_port()
    serve_log, caddy_log = tmp_path / "serve.log", tmp_path / "caddy.log"
    serve = [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/hub.db"]
    serve += ["--public-url", f"https://{DOMAIN}:{https}", "--relay-domain", DOMAIN]
    serve += ["--trusted-networks", "127.0.0.1/32"]  # fat pings from Caddy's own address only: see below
    env = {
        **os.environ,
        "DOMAIN": DOMAIN,
        "RELAY_DOMAIN": DOMAIN,
        "UPSTREAM": f"127.0.0.1:{port}",
        "HTTP_PORT": str(http_port),
        "HTTPS_PORT": str(https),
        "CADDY_ADMIN": "off",
        # Caddy's own CA, and never into the system's trust store (it would as root).
        "CADDY_GLOBAL_OPTIONS": "local_certs\nskip_install_trust",
        "XDG_DATA_HOME": str(tmp_path / "data"),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "HOME": str(tmp_path),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with serve_log.open("wb") as out:
            procs.append(subprocess.Popen(serve, stdout=out, stderr=subprocess.STDOUT))
        with caddy_log.open("wb") as out:
            command = [caddy, "run", "--config", str(CADDYFILE), "--adapter", "caddyfile"]
            procs.append(subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path))
        root = tmp_path / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        found = Deployment(https, http_port, root, caddy_log, serve_log)

        async def up() -> bool:
            for proc, log in zip(procs, (serve_log, caddy_log), strict=True):
                assert proc.poll() is None, log.read_text(errors="replace")
            if not root.exists():
                return False
            try:
                async with found.client() as http:
                    return (await http.get(found.base + "/healthz")).status_code == 200
            except (httpx.TransportError, ssl.SSLError):
                return False

        await wait_for(up, timeout=60, interval=0.1)
        yield found
    finally:
        for proc in reversed(procs):
            _stop(proc)


class App:
    """A relay application that is also a WebSub subscriber: echoes challenges, records updates."""

    def __init__(self) -> None:
        self.updates: list[bytes] = []

    def __call__(self, request: HttpRequest) -> HttpResponse:
        query = parse_qs(urlsplit(request.target).query)
        if request.method == "GET" and "hub.challenge" in query:
            return HttpResponse(200, [("content-type", "text/plain")], query["hub.challenge"][0].encode())
        if request.target.startswith("/cb"):
            self.updates.append(request.body)
            return HttpResponse(204, [], b"")
        return HttpResponse(
            200, [("content-type", "text/plain")], f"{request.method} {request.target} ".encode() + request.body
        )


async def test_the_recipe_serves_relay_names_and_the_hub_over_https(deployment: Deployment) -> None:
    d = deployment
    app = App()
    async with d.client() as http:
        landing = await http.get(d.base + "/")
        assert landing.status_code == 200 and f"https://NAME.{DOMAIN}:{d.https}/" in landing.text

        # A name that is not registered gets no certificate: Caddy asked reversehub first.
        with pytest.raises(httpx.ConnectError):
            await d.to_name("nobody", "GET", "/")

        async with Endpoint(d.base + "/reversehttp", app, name="alice", http=http) as endpoint:
            assert endpoint.public_url == f"https://alice.{DOMAIN}:{d.https}/"
            # The relay round trip, through Caddy's certificate for alice.localhost, obtained on demand.
            r = await d.to_name("alice", "POST", "/hello?x=1", b"ping")
            assert (r.status_code, r.text) == (200, "POST /hello?x=1 ping")
            # The landing page is the main host's: a relay name's / is the application's own.
            r = await d.to_name("alice", "GET", "/")
            assert (r.status_code, r.text) == (200, "GET / ")

            # The hub: subscribe the name's URL, publish, and the update arrives over the relay.
            topic, callback, secret = d.base + "/topics/caddy", endpoint.public_url + "cb", "caddy-secret"
            form = {"hub.mode": "subscribe", "hub.topic": topic, "hub.callback": callback, "hub.secret": secret}
            assert (await http.post(d.base + "/hub", data=form)).status_code == 202

            async def active() -> bool:
                r = await http.get(d.base + "/hub/status", params=status_params(secret, callback, topic))
                return r.status_code == 200 and r.json()["state"] == "active"

            await wait_for(active, timeout=20, interval=0.05)
            r = await http.post(
                d.base + "/publish",
                params={"hub.topic": topic},
                content=b"news",
                headers={"content-type": "text/plain"},
            )
            assert r.status_code < 300, r.text
            await wait_for(lambda: app.updates == [b"news"], timeout=20, interval=0.05)

        # Through Caddy reversehub sees the client's own address, not Caddy's 127.0.0.1: a fat ping
        # from 127.0.0.2 is refused, even one that claims to come from 127.0.0.1.
        async with d.client(local_address="127.0.0.2") as other:
            for headers in ({}, {"X-Forwarded-For": "127.0.0.1"}):
                r = await other.post(d.base + "/publish", params={"hub.topic": topic}, content=b"x", headers=headers)
                assert r.status_code == 403, (headers, r.status_code, r.text)

    # Plain HTTP is redirected to HTTPS.
    async with httpx.AsyncClient(timeout=10) as plain:
        r = await plain.get(f"http://{DOMAIN}:{d.http}/demo")
        location = httpx.URL(r.headers["location"])
        assert r.status_code in (301, 308) and (location.scheme, location.host, location.path) == (
            "https",
            DOMAIN,
            "/demo",
        )
