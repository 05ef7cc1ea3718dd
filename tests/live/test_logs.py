"""What ``reversehub serve`` writes to its log at the default level never holds a secret.

The server runs as operators run it (the CLI, default ``--log-level info``); a subscriber with a
token in its callback URL and a ``hub.secret`` is verified and gets a delivery, and a relay
application claims a name with a token and polls. Then the whole log is searched for each of
those secrets and for the challenges the hub sent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from tests.support import free_port, serve_live, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.live]


async def test_the_log_holds_no_secret_url_token_or_challenge(tmp_path: Path) -> None:
    challenges: list[str] = []
    bodies: list[bytes] = []

    async def callback(request: Request) -> Response:
        if request.method == "GET":
            challenges.append(request.query_params["hub.challenge"])
            return PlainTextResponse(request.query_params["hub.challenge"])
        bodies.append(await request.body())
        return Response(status_code=204)

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "server.log"
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    command = [sys.executable, "-m", "reversehub", "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--database-url", f"sqlite:///{tmp_path / 'hub.db'}", "--allow-private-networks"]
    callback_token = "cb-token-5f1d0c7e9a"
    hub_secret = "hub-secret-8c2b41d3"
    relay_token = "relay-token-0e9f7a21"
    with log_path.open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            async with serve_live(Starlette(routes=[Route("/cb", callback, methods=["GET", "POST"])])) as cb_base:
                async with httpx.AsyncClient(timeout=10) as http:

                    async def up() -> bool:
                        try:
                            return (await http.get(base + "/healthz")).status_code == 200
                        except httpx.HTTPError:
                            return False

                    await wait_for(up, timeout=60, interval=0.1)
                    topic = f"{cb_base}/topic"
                    form = {
                        "hub.mode": "subscribe",
                        "hub.topic": topic,
                        "hub.callback": f"{cb_base}/cb?token={callback_token}",
                        "hub.secret": hub_secret,
                    }
                    assert (await http.post(base + "/hub", data=form)).status_code == 202
                    await wait_for(lambda: len(challenges) == 1, timeout=20)
                    # Stored from the moment the challenge went out, so it reaches the subscriber.
                    published = await http.post(
                        base + "/publish",
                        params={"hub.topic": topic},
                        content=b"news",
                        headers={"Content-Type": "text/plain"},
                    )
                    assert published.is_success
                    await wait_for(lambda: bodies == [b"news"], timeout=20)

                    claimed = await http.post(base + "/reversehttp", data={"name": "logcheck", "token": relay_token})
                    assert claimed.status_code == 201
                    private_url = claimed.headers["location"]
                    request_url = claimed.links["first"]["url"]
                    public_url = claimed.links["related"]["url"]
                    assert (await http.get(private_url)).status_code == 200
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(_answer_one, http, request_url)
                        relayed = await http.get(public_url + "hello")
                    assert (relayed.status_code, relayed.text) == (200, "hi")
        finally:
            server.terminate()
            server.wait(timeout=30)
    log_text = log_path.read_text(errors="replace")
    assert "reversehub serving at" in log_text  # the log is the server's, at the level that shows requests
    assert "/reversehttp" in log_text
    secrets = [callback_token, hub_secret, relay_token, *challenges]
    secrets += [private_url.rsplit("/", 1)[-1], request_url.rsplit("/", 1)[-1]]
    for secret in secrets:
        assert secret not in log_text, f"{secret!r} is in the server log"


async def _answer_one(http: httpx.AsyncClient, request_url: str) -> None:
    """A ReverseHttp application: one poll, one reply."""
    poll = await http.get(request_url, timeout=30)
    assert poll.status_code == 200
    reply = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    answered = await http.post(request_url, content=reply, headers={"Content-Type": "message/http"})
    assert answered.status_code == 202
