"""Exact HTTP through the relay (issue 17): what the application answers is what the requester gets.

The application here is a stock ``http.server.BaseHTTPRequestHandler`` run on the polled request's
bytes, as the original Python client ran one: it answers HEAD with the GET's Content-Length and no
body, writes its own ``Date`` and ``Server``, and may leave ``Content-Length`` out (the body then
runs to the end of the reply).
"""

from __future__ import annotations

import io
from http.server import BaseHTTPRequestHandler
from typing import Any

import anyio
import httpx
import pytest

from relay.wire import HttpResponse, parse_responses, serialize_response
from tests.relay.helpers import links, register

pytestmark = pytest.mark.anyio

PAGE = b"<p>hello</p>\n"


class Handler(BaseHTTPRequestHandler):
    """A stock handler: GET and HEAD of one page, plus a custom status with its own reason phrase."""

    server_version = "Stock/1.0"

    def setup(self) -> None:
        self.rfile = io.BytesIO(self.request)
        self.wfile = io.BytesIO()

    def finish(self) -> None:
        self.server.output = self.wfile.getvalue()  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()

    def do_GET(self) -> None:
        if self.path.endswith("/custom"):
            self.send_response(299, "Custom Reason")
            self.end_headers()
            self.wfile.write(b"no length: to the end")  # Python-2 style: no Content-Length
            return
        self.do_HEAD()
        self.wfile.write(PAGE)


class _Server:
    output = b""


def stock_reply(request: bytes) -> bytes:
    """What the stock handler writes for ``request`` (the bytes a poll delivered)."""
    server = _Server()
    Handler(request, ("127.0.0.1", 1), server)  # type: ignore[arg-type]
    return server.output


async def through(client: httpx.AsyncClient, name: str, method: str, path: str = "/") -> tuple[httpx.Response, int]:
    """``method path`` on ``name``'s public URL, answered by the stock handler; (response, ack status)."""
    urls = await register(client, name)
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def requester() -> None:
            result["r"] = await client.request(method, f"/relay/{name}{path}")

        tg.start_soon(requester)
        poll = await client.get(urls["first"])
        assert poll.status_code == 200
        ack = await client.post(
            urls["first"], content=stock_reply(poll.content), headers={"content-type": "message/http"}
        )
    return result["r"], ack.status_code


async def test_a_stock_handler_answers_head_without_a_body(client):
    r, ack = await through(client, "head", "HEAD")
    assert ack == 202
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-length"] == str(len(PAGE))  # the GET's size, as the application said


async def test_get_through_a_stock_handler_still_has_its_body(client):
    r, ack = await through(client, "get", "GET")
    assert ack == 202 and r.content == PAGE


async def test_a_reply_without_content_length_runs_to_the_end(client):
    r, ack = await through(client, "noclen", "GET", "/custom")
    assert ack == 202
    assert r.status_code == 299 and r.content == b"no length: to the end"


async def test_link_location_and_requesting_client_are_written_as_the_spec_writes_them(client):
    r = await client.post("/reversehttp", data={"name": "cased", "token": "t"})
    names = [k for k, _ in r.headers.raw]
    assert b"Link" in names and b"Location" in names and b"link" not in names
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def requester() -> None:
            result["r"] = await client.get("/relay/cased/")

        tg.start_soon(requester)
        first = links(r)["first"]
        poll = await client.get(first)
        names = [k for k, _ in poll.headers.raw]
        assert b"Link" in names and b"Requesting-Client" in names, names
        await client.post(first, content=stock_reply(poll.content), headers={"content-type": "message/http"})
    assert result["r"].content == PAGE


def test_a_pipeline_of_replies_frames_each_by_its_requests_method():
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    got = parse_responses(head + head + b"hello", request_methods=["HEAD", "GET"])
    assert [r.body for r in got] == [b"", b"hello"]
    assert got[0].header("content-length") == "5"


def test_a_reply_to_head_is_written_with_its_content_length_and_no_body():
    reply = HttpResponse(200, [("Content-Length", "5"), ("Transfer-Encoding", "chunked")], b"", "OK")
    assert serialize_response(reply, "HEAD").endswith(b"Transfer-Encoding: chunked\r\n\r\n")
    assert serialize_response(HttpResponse(200, [("Content-Length", "5")]), "HEAD").endswith(b"\r\n\r\n")


async def test_a_reply_to_head_without_content_length_gets_none_made_up(client):
    urls = await register(client, "headnolen")
    result: dict[str, Any] = {}
    async with anyio.create_task_group() as tg:

        async def requester() -> None:
            result["r"] = await client.head("/relay/headnolen/")

        tg.start_soon(requester)
        assert (await client.get(urls["first"])).status_code == 200
        reply = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n"
        await client.post(urls["first"], content=reply, headers={"content-type": "message/http"})
    assert result["r"].status_code == 200 and "content-length" not in result["r"].headers
