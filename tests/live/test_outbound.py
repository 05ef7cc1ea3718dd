"""The outbound seam (reversehub.core.outbound), one contract over every implementation.

``httpx`` and ``lean`` reach a peer served by uvicorn on a real socket; ``own-relay`` answers the
same peer in-process, as the server answers URLs of its own relay, and must never use its network
side for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

import anyio
import httpx
import pytest

from reversehub.core.outbound import (
    HttpxOutbound,
    LeanOutbound,
    Outbound,
    OutboundError,
    OwnRelay,
    Response,
    same_origin,
)
from reversehub.core.sender import Sender
from tests.support import serve_live

pytestmark = [pytest.mark.anyio, pytest.mark.live]

OWN = "http://hub.test"


class Peer:
    """An ASGI app that records each request and answers 201 with a ten-byte body; ``/redirect``
    answers 302, ``/hang`` never answers (it waits for the client to go)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, bytes, dict[str, str], bytes]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.seen.append((scope["method"], scope["path"], scope["query_string"], headers, body))
        if scope["path"] == "/hang":
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        status, extra = (302, [(b"location", b"/elsewhere")]) if scope["path"] == "/redirect" else (201, [])
        await send({"type": "http.response.start", "status": status, "headers": [(b"x-peer", b"yes"), *extra]})
        await send({"type": "http.response.body", "body": b"0123", "more_body": True})
        await send({"type": "http.response.body", "body": b"456789"})


class Unreachable:
    """A network side that fails the test when it is used."""

    async def request(self, method: str, url: str, **_: Any) -> Response:
        raise AssertionError(f"{method} {url} left the process")

    async def post(self, url: str, headers: dict[str, str], body: bytes, timeout: float) -> int:
        raise AssertionError(f"POST {url} left the process")


@pytest.fixture(params=["httpx", "lean", "own-relay"])
async def door(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Outbound, str, Peer]]:
    peer = Peer()
    if request.param == "own-relay":
        yield OwnRelay(peer, same_origin(OWN), Unreachable()), OWN, peer
        return
    async with serve_live(peer) as base:
        client = httpx.AsyncClient(follow_redirects=False)
        outbound = HttpxOutbound(client) if request.param == "httpx" else LeanOutbound(client, Sender())
        try:
            yield outbound, base, peer
        finally:
            await outbound.aclose()


async def test_post_sends_the_headers_and_body_and_returns_the_status(door: tuple[Outbound, str, Peer]) -> None:
    outbound, base, peer = door
    status = await outbound.post(f"{base}/cb?token=t", {"Content-Type": "text/plain", "X-Hub-Sequence": "3"}, b"hi", 5)
    assert status == 201
    [(method, path, query, headers, body)] = peer.seen
    assert (method, path, query, body) == ("POST", "/cb", b"token=t", b"hi")
    assert headers["content-type"] == "text/plain" and headers["x-hub-sequence"] == "3"


async def test_request_keeps_at_most_limit_bytes_and_gives_the_headers(door: tuple[Outbound, str, Peer]) -> None:
    outbound, base, peer = door
    short = await outbound.request("GET", f"{base}/cb", headers={"Accept": "text/plain"}, timeout=5, limit=5)
    assert (short.status, short.body, short.headers["X-Peer"]) == (201, b"01234", "yes")
    whole = await outbound.request("GET", f"{base}/cb", timeout=5, limit=100)
    assert whole.body == b"0123456789"
    assert peer.seen[0][3]["accept"] == "text/plain"


async def test_redirects_are_not_followed(door: tuple[Outbound, str, Peer]) -> None:
    outbound, base, peer = door
    response = await outbound.request("GET", f"{base}/redirect", timeout=5, limit=0)
    assert response.is_redirect and response.headers["location"] == "/elsewhere"
    assert [path for _, path, *_ in peer.seen] == ["/redirect"]


async def test_a_failed_exchange_is_an_outbound_error_without_the_url(door: tuple[Outbound, str, Peer]) -> None:
    outbound, base, _ = door
    url = f"{base}/hang?token=s3cret"
    with pytest.raises(OutboundError) as post_failed:
        await outbound.post(url, {}, b"x", 0.2)
    with pytest.raises(OutboundError) as get_failed:
        await outbound.request("GET", url, timeout=0.2, limit=10)
    for failed in (post_failed, get_failed):
        assert "s3cret" not in str(failed.value) and "hub.test" not in str(failed.value)


async def test_our_own_relay_takes_posts_first_and_the_rest_goes_to_the_network() -> None:
    """A POST to our own relay is offered to the relay's own entry (``post_here``) first; a URL the
    relay does not serve there goes to the app in-process; any other origin goes to the network."""
    offered: list[str] = []
    network: list[tuple[str, str]] = []

    async def post_here(url: str, headers: dict[str, str], body: bytes) -> int | None:
        offered.append(url)
        return 202 if "/relay/" in url else None

    class Recording:
        async def request(self, method: str, url: str, **_: Any) -> Response:
            network.append((method, url))
            return Response(200, [], b"")

        async def post(self, url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> int:
            network.append(("POST", url))
            return 204

    peer = Peer()
    outbound = OwnRelay(peer, same_origin(OWN), Recording(), post_here)
    assert await outbound.post(f"{OWN}/relay/a/cb", {}, b"x", 5) == 202
    assert await outbound.post(f"{OWN}/other", {}, b"x", 5) == 201
    assert await outbound.post("http://sub.test/cb", {}, b"x", 5) == 204
    assert (await outbound.request("GET", f"{OWN}/relay/a/cb", timeout=5, limit=0)).status == 201
    assert (await outbound.request("GET", f"{OWN}.evil.test/cb", timeout=5, limit=0)).status == 200
    assert offered == [f"{OWN}/relay/a/cb", f"{OWN}/other"]
    assert [path for _, path, *_ in peer.seen] == ["/other", "/relay/a/cb"]
    assert network == [("POST", "http://sub.test/cb"), ("GET", f"{OWN}.evil.test/cb")]


async def test_our_own_relay_answers_a_url_that_is_not_ascii_in_process_percent_encoded() -> None:
    peer = Peer()
    outbound = OwnRelay(peer, same_origin(OWN), Unreachable())
    assert (await outbound.request("GET", f"{OWN}/relay/a/café", timeout=5, limit=0)).status == 201
    assert await outbound.post(f"{OWN}/relay/a/café", {}, b"x", 5) == 201
    assert [path for _, path, *_ in peer.seen] == ["/relay/a/café"] * 2  # ASGI's path is decoded


async def test_the_relays_own_entry_failing_or_too_slow_is_an_outbound_error() -> None:
    async def raises(url: str, headers: dict[str, str], body: bytes) -> int | None:
        raise RuntimeError(f"boom at {url}")

    async def hangs(url: str, headers: dict[str, str], body: bytes) -> int | None:
        await anyio.sleep(10)
        return 200

    for post_here, reason in [(raises, "RuntimeError"), (hangs, "timed out")]:
        outbound = OwnRelay(Peer(), same_origin(OWN), Unreachable(), post_here)
        with pytest.raises(OutboundError, match=f"^{reason}$"):
            await outbound.post(f"{OWN}/relay/a/cb?token=s3cret", {}, b"x", 0.1)
