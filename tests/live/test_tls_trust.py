"""One trust policy for every outbound https request: the intent verification (GET, httpx) and the
deliveries (POST, reversehub.core.sender) trust the same CAs, so a callback the hub verified is one it can
deliver to, and one it could not verify gets nothing.

The hub trusts what httpx trusts: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's bundle.
OpenSSL's own default paths (what ``ssl.create_default_context()`` loads) add the system store and
read *both* variables, so with ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` both set the two policies part:
the second run below is where a sender on the system's defaults delivered to a callback that
verification could not reach.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from reversehub.server.app import create_app
from tests.hub.proofs import status_params
from tests.support import bound_socket, live_settings, serve_live, unavailable, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]

TOPIC = "http://127.0.0.1:9/topic"


@dataclass
class Pki:
    ca: Path  # the throwaway CA's certificate (PEM)
    ca_dir: Path  # a directory holding only that CA, under its OpenSSL subject hash (for SSL_CERT_DIR)
    cert: Path  # the callback server's certificate for 127.0.0.1, signed by the CA
    key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl not found")

    def run(*args: str) -> str:
        return subprocess.run([openssl, *args], check=True, capture_output=True, text=True).stdout

    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert, key, csr, ext = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "cert.csr", tmp_path / "ext.cnf"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-days", "1", "-subj", "/CN=reversehub test CA", "-keyout", str(ca_key), "-out", str(ca))
    run("req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(csr))
    ext.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    run(
        *("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "1"),
        *("-extfile", str(ext), "-out", str(cert)),
    )
    ca_dir = tmp_path / "ca.d"
    ca_dir.mkdir()
    shutil.copyfile(ca, ca_dir / (run("x509", "-subject_hash", "-noout", "-in", str(ca)).strip() + ".0"))
    return Pki(ca, ca_dir, cert, key)


class Callback:
    """A subscriber's https server: echoes challenges, records deliveries."""

    def __init__(self) -> None:
        self.verified: list[str] = []
        self.deliveries: list[tuple[str, bytes]] = []
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST"])])

    async def handle(self, request: Request) -> Response:
        if request.method == "GET":
            self.verified.append(request.url.path)
            return PlainTextResponse(request.query_params.get("hub.challenge", ""))
        self.deliveries.append((request.url.path, await request.body()))
        return Response(status_code=204)


async def test_verification_and_delivery_trust_the_same_cas(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The environment is read once per hub, when its lifespan builds the context.
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    caplog.set_level(logging.INFO, logger="hub")
    cb = Callback()
    async with serve_live(cb.app, ssl_certfile=str(pki.cert), ssl_keyfile=str(pki.key)) as base:
        cb_url = base.replace("http://", "https://")

        # 1. The CA trusted (SSL_CERT_FILE): the hub verifies the callback and delivers to it.
        monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca))
        async with _hub(database_url) as client:
            assert (await _subscribe(client, f"{cb_url}/a")).status_code == 202
            await wait_for(lambda: _state(client, f"{cb_url}/a", "active"), timeout=10)
            assert (await _publish(client, b"one")).status_code == 204
            await wait_for(lambda: _status(client, f"{cb_url}/a", last_seq=1, pending=0), timeout=10)
        assert cb.verified == ["/a"]
        assert cb.deliveries == [("/a", b"one")]

        # 2. Public roots in SSL_CERT_FILE, our CA only in SSL_CERT_DIR: httpx reads the file alone,
        # so the CA is not trusted, and neither a verification nor a delivery may reach the callback.
        monkeypatch.setenv("SSL_CERT_FILE", certifi.where())
        monkeypatch.setenv("SSL_CERT_DIR", str(pki.ca_dir))
        caplog.clear()
        async with _hub(database_url, delivery_max_age=1.0) as client:  # retried for a second, then given up
            assert (await _subscribe(client, f"{cb_url}/b")).status_code == 202
            # The log says why, in the words a failed delivery's status uses.
            await wait_for(
                lambda: _logged(caplog, "verification GET failed: ConnectError: certificate not verified ("), timeout=10
            )
            # Never activated: the same 403 as a wrong proof (the endpoint tells nobody what exists).
            assert (await _status_response(client, f"{cb_url}/b")).status_code == 403
            assert (await _publish(client, b"two")).status_code == 204
            await wait_for(lambda: len(cb.deliveries) > 1 or _status(client, f"{cb_url}/a", failed=True), timeout=10)
            assert cb.deliveries == [("/a", b"one")]  # not delivered to a callback verification cannot reach
            failure = (await _status_response(client, f"{cb_url}/a")).json()["last_failure"]
            assert "certificate" in failure
        assert cb.verified == ["/a"]


@asynccontextmanager
async def _hub(database_url: str, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """A hub on real sockets (no injected transport: verification on httpx, deliveries on reversehub.core.sender)."""
    sock = bound_socket()
    settings = live_settings(database_url, sock.getsockname()[1], delivery_retry_base=0.02, **overrides)
    async with serve_live(create_app(settings), sock=sock) as url, httpx.AsyncClient(base_url=url) as client:
        yield client


async def _subscribe(client: httpx.AsyncClient, callback: str) -> httpx.Response:
    form = {"hub.mode": "subscribe", "hub.topic": TOPIC, "hub.callback": callback, "hub.secret": "s"}
    return await client.post("/hub", data=form)


async def _publish(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post(f"/publish?hub.topic={TOPIC}", content=body, headers={"Content-Type": "text/plain"})


async def _status_response(client: httpx.AsyncClient, callback: str) -> httpx.Response:
    return await client.get("/hub/status", params=status_params("s", callback, TOPIC))


async def _state(client: httpx.AsyncClient, callback: str, state: str) -> bool:
    r = await _status_response(client, callback)
    return r.status_code == 200 and r.json()["state"] == state


async def _status(client: httpx.AsyncClient, callback: str, **expected: object) -> bool:
    r = await _status_response(client, callback)
    assert r.status_code == 200
    got = r.json()
    if expected.pop("failed", False) and not got["last_failure"]:
        return False
    return all(got[k] == v for k, v in expected.items())


def _logged(caplog: pytest.LogCaptureFixture, message: str) -> bool:
    return any(message in record.getMessage() for record in caplog.records)
