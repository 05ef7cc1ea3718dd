"""``reversehub serve --ssl-certfile/--ssl-keyfile``: HTTPS on a real socket, with a throwaway CA.

The server runs as operators run it (the CLI, in its own process). With a certificate and no
``--public-url`` every URL it hands out is https; the admin listener speaks TLS too (uvicorn serves
every socket of one server with the same context), and the log and the landing page say so. A
relay application behind it answers a requester end to end over TLS. Start-up refusals (unreachable
public URLs, unusable certificates) are one line and a non-zero exit; a listener beyond loopback
without ``--public-url`` is warned about.
"""

from __future__ import annotations

import os
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from clients.endpoint import Endpoint
from relay.wire import HttpRequest, HttpResponse
from tests.live.test_scaleout import REVERSEHUB, Proc, broker_url, database, launch  # noqa: F401
from tests.live.test_tls_trust import Pki, pki  # noqa: F401  (the throwaway CA and a cert for 127.0.0.1)
from tests.support import free_port, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

TOKEN = "admin-tls-s3cret"


@pytest.fixture
def serve_tls(tmp_path: Path, pki: Pki) -> Iterator[tuple[int, int, Path, subprocess.Popen[bytes]]]:  # noqa: F811
    port, admin_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    command = [REVERSEHUB, "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path}/hub.db"]
    command += ["--admin-token", TOKEN, "--admin-listen", f"127.0.0.1:{admin_port}"]
    env = {**os.environ, "REVERSEHUB_SSL_CERTFILE": str(pki.cert), "REVERSEHUB_SSL_KEYFILE": str(pki.key)}
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        yield port, admin_port, log, proc
    finally:
        proc.terminate()
        try:
            assert proc.wait(20) == 0, log.read_text(errors="replace")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_serve_speaks_https_and_hands_out_https_urls(serve_tls, pki: Pki) -> None:  # noqa: F811
    port, admin_port, log, proc = serve_tls
    base, admin = f"https://127.0.0.1:{port}", f"https://127.0.0.1:{admin_port}"
    trust = ssl.create_default_context(cafile=str(pki.ca))
    async with httpx.AsyncClient(verify=trust, timeout=10) as http:

        async def up() -> bool:
            assert proc.poll() is None, log.read_text(errors="replace")
            try:
                return (await http.get(base + "/healthz")).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(up, timeout=30, interval=0.05)
        # Plain HTTP on the TLS port is no way in.
        async with httpx.AsyncClient(timeout=5) as plain:
            with pytest.raises(httpx.TransportError):
                await plain.get(f"http://127.0.0.1:{port}/healthz")

        r = await http.post(base + "/reversehttp", data={"name": "shop", "token": "t"})
        assert r.status_code == 201
        assert r.headers["location"].startswith(base + "/reversehttp/p/")
        assert f"<{base}/relay/shop/>" in r.headers["link"]

        # The admin listener speaks TLS too, and the landing page says where it is.
        assert (await http.get(admin + "/dashboard/login")).status_code == 200
        assert f'href="{admin}/"' in (await http.get(base + "/")).text

        # A relay application behind it answers a requester, both over TLS.
        def handler(request: HttpRequest) -> HttpResponse:
            return HttpResponse(200, [("content-type", "text/plain")], b"over tls: " + request.body)

        async with Endpoint(base + "/reversehttp", handler, name="app", http=http) as endpoint:
            assert endpoint.public_url == base + "/relay/app/"
            reply = await http.post(endpoint.public_url + "x", content=b"ping")
            assert (reply.status_code, reply.text) == (200, "over tls: ping")

    text = log.read_text()
    assert f"public URL {base}/" in text and f"dashboard at {admin}/" in text
    assert TOKEN not in text


@pytest.mark.postgres
@pytest.mark.redis
async def test_worker_processes_serve_tls_too(
    launch: Callable[..., Proc],  # noqa: F811
    database: str,  # noqa: F811
    broker_url: str,  # noqa: F811
    pki: Pki,  # noqa: F811
) -> None:
    tls = ["--ssl-certfile", str(pki.cert), "--ssl-keyfile", str(pki.key)]
    proc = launch("--database-url", database, "--redis-url", broker_url, "--workers", "2", *tls)
    base = proc.base.replace("http://", "https://")
    trust = ssl.create_default_context(cafile=str(pki.ca))

    async def up() -> bool:
        assert proc.alive(), proc.output()
        try:
            async with httpx.AsyncClient(verify=trust, timeout=10) as fresh:
                return (await fresh.get(base + "/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    await wait_for(up, timeout=30, interval=0.05)
    for _ in range(6):  # a new connection each time: the kernel spreads them over the workers
        async with httpx.AsyncClient(verify=trust, timeout=10) as fresh:
            r = await fresh.post(base + "/reversehttp", data={"name": "w", "token": "t"})
            assert r.status_code in (201, 204) and r.headers["location"].startswith(base + "/"), r.text


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [REVERSEHUB, "serve", *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


@pytest.mark.parametrize("url", ["http://0.0.0.0:8000", "https://[::]/", "ftp://hub.example.com"])
def test_an_unreachable_public_url_is_refused_in_one_line(url: str, tmp_path: Path) -> None:
    out = _serve(
        "--database-url", f"sqlite:///{tmp_path}/hub.db", "--port", str(free_port()), REVERSEHUB_PUBLIC_URL=url
    )
    assert out.returncode == 1
    assert out.stderr.startswith(f"Error: --public-url {url}: ") and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "hub.db").exists()  # refused before anything was opened


def test_an_unusable_certificate_is_refused_in_one_line(tmp_path: Path, pki: Pki) -> None:  # noqa: F811
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.key), "-aes256", "-passout", "pass:pw", "-out", str(encrypted)], check=True
    )
    out = _serve("--ssl-certfile", str(bogus), "--database-url", f"sqlite:///{tmp_path}/hub.db")
    assert out.returncode == 1 and out.stderr.startswith(f"Error: cannot use --ssl-certfile {bogus}: ")
    assert out.stderr.count("\n") == 1, out.stderr
    out = _serve("--ssl-certfile", str(pki.cert), "--ssl-keyfile", str(encrypted))
    assert (out.returncode, out.stderr) == (
        1,
        f"Error: cannot use --ssl-certfile {pki.cert}: the private key is encrypted; give one without a passphrase\n",
    )
    out = _serve("--ssl-certfile", str(tmp_path / "missing.pem"))
    assert out.returncode == 1 and "No such file" in out.stderr and out.stderr.count("\n") == 1
    out = _serve("--ssl-keyfile", str(bogus))
    assert (out.returncode, out.stderr) == (
        1,
        "Error: --ssl-keyfile needs --ssl-certfile (the certificate it belongs to)\n",
    )


async def test_listening_beyond_loopback_without_a_public_url_is_warned_about(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "serve.log"
    command = [REVERSEHUB, "serve", "--host", "0.0.0.0", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "--database-url", f"sqlite:///{tmp_path}/hub.db"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        async with httpx.AsyncClient(timeout=10) as http:

            async def up() -> bool:
                assert proc.poll() is None, log.read_text(errors="replace")
                try:
                    return (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(up, timeout=30, interval=0.05)
    finally:
        proc.terminate()
        proc.wait(20)
    text = log.read_text()
    assert "WARNING" in text and "listening on 0.0.0.0 without --public-url" in text
    for line in (
        f"public URL http://0.0.0.0:{port}/",
        f"demo http://0.0.0.0:{port}/demo",
        "dashboard off (start with --admin-token to turn it on)",
        f"database: SQLite file {tmp_path}/hub.db",
    ):
        assert line in text, line
