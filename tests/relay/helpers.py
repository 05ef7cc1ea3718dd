"""Small helpers for relay tests: register, read Link headers, answer one poll."""

from __future__ import annotations

import re

import httpx

from relay.wire import HttpResponse, parse_request, serialize_response

_LINK = re.compile(r'<([^>]*)>\s*;\s*rel="([^"]*)"')


def links(response: httpx.Response) -> dict[str, str]:
    """rel -> URL from every ``Link`` header line (the way the original clients read them)."""
    found: dict[str, str] = {}
    for value in response.headers.get_list("link"):
        for url, rel in _LINK.findall(value):
            found[rel] = url
    return found


async def register(client: httpx.AsyncClient, name: str, token: str = "t", **form: str) -> dict[str, str]:
    """Register ``name``; returns {"first", "related", "location"}."""
    r = await client.post("/reversehttp", data={"name": name, "token": token, **form})
    assert r.status_code in (201, 204), r.text
    found = links(r)
    found["location"] = r.headers["location"]
    return found


async def serve_one(
    client: httpx.AsyncClient, url: str, status: int = 200, body: bytes = b"ok", headers: dict[str, str] | None = None
) -> tuple[bytes, str]:
    """Poll ``url`` until one request arrives, answer it; returns (the raw request, next URL)."""
    while True:
        r = await client.get(url)
        if r.status_code == 200:
            break
        assert r.status_code == 204, r.text
    request = parse_request(r.content)
    reply = HttpResponse(status, list((headers or {}).items()), body, "OK")
    ack = await client.post(url, content=serialize_response(reply), headers={"content-type": "message/http"})
    assert ack.status_code == 202, ack.text
    assert request.method
    return r.content, links(r)["next"]
