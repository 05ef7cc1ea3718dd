"""Replies that parse but cannot be relayed as they are: the poller gets 400, the requester 502."""

from __future__ import annotations

import anyio
import pytest

from tests.relay.helpers import register

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\nContent-Length: 2\r\n\r\nok",  # a lone CR inside a header value
        b"HTTP/1.1 200 OK\r\nX: \xff\x00\r\n\r\n",  # NUL
        # Any other control character but HTAB (RFC 9110 5.5): the requester's server would not send it.
        b"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x1bb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x7fb\r\n\r\n",
    ],
    ids=["lone-cr", "nul", "soh", "esc", "del"],
)
async def test_a_reply_with_a_bad_header_value_is_400_and_the_requester_gets_502(client, reply):
    urls = await register(client, "crlf")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/crlf/")

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200
        bad = await client.post(urls["first"], content=reply, headers={"content-type": "message/http"})
        assert bad.status_code == 400 and bad.text.startswith("invalid reply")
    assert result["r"].status_code == 502


async def test_a_json_reply_with_a_control_character_in_a_header_is_400_and_the_requester_gets_502(client):
    urls = await register(client, "jsonctl")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/jsonctl/")

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200
        reply = {"status": 200, "headers": [["X", "a\u0007b"]], "body": "ok"}
        bad = await client.post(urls["first"], json=reply)
        assert bad.status_code == 400 and bad.text.startswith("invalid reply")
    assert result["r"].status_code == 502


async def test_a_header_value_with_a_tab_is_relayed(client):
    urls = await register(client, "tab")
    result = {}
    async with anyio.create_task_group() as tg:

        async def requester():
            result["r"] = await client.get("/relay/tab/")

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200
        ok = await client.post(urls["first"], content=b"HTTP/1.1 200 OK\r\nX: a\tb\r\nContent-Length: 2\r\n\r\nok")
        assert ok.status_code == 202
    assert result["r"].headers["x"] == "a\tb"
