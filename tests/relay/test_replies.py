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
    ],
    ids=["lone-cr", "nul"],
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
