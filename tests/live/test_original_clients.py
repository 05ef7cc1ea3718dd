"""Exact HTTP through a running ``reversehub serve``, with small clients that behave like the originals.

- the application looks ``Link`` and ``Requesting-Client`` up case-sensitively on the raw bytes (as
  the original Java client does) and answers with a stock ``BaseHTTPRequestHandler``;
- the requester reads raw bytes too: the reason phrase, one ``Date`` and one ``Server``, a HEAD's
  Content-Length without a body, and the application sees the header names as the requester wrote them.
"""

from __future__ import annotations

import re
import socket
import threading
from urllib.parse import urlsplit

from tests.live.test_readme_walkthrough import server  # noqa: F401  (the fixture: a running reversehub serve)
from tests.relay.test_exact_http import PAGE, stock_reply


def exchange(port: int, request: bytes) -> bytes:
    """One request on its own connection (``Connection: close``); the raw response, whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def link(raw: bytes, rel: str) -> str:
    """The path of the ``Link`` of relation ``rel``, looked up case-sensitively as the Java client does."""
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1")
    m = re.search(rf'^Link: <([^>]*)>; rel="{rel}"\r?$', head, re.M)
    assert m, f"no case-sensitive Link rel={rel} in:\n{head}"
    return urlsplit(m.group(1)).path


def serve_one(port: int, url: str) -> tuple[bytes, str]:
    """Poll ``url`` until a request comes, answer it with the stock handler; (the request, next URL)."""
    host = f"Host: 127.0.0.1:{port}\r\nConnection: close\r\n"
    while True:
        poll = exchange(port, f"GET {url} HTTP/1.1\r\n{host}\r\n".encode())
        if poll.startswith(b"HTTP/1.1 200"):
            break
        assert poll.startswith(b"HTTP/1.1 204"), poll[:200]
    head, _, request = poll.partition(b"\r\n\r\n")
    assert re.search(rb"^Requesting-Client: 127\.0\.0\.1:\d+\r?$", head, re.M), head
    reply = stock_reply(request)
    ack = exchange(
        port,
        f"POST {url} HTTP/1.1\r\n{host}Content-Type: message/http\r\nContent-Length: {len(reply)}\r\n\r\n".encode()
        + reply,
    )
    assert ack.startswith(b"HTTP/1.1 202"), ack[:200]
    return request, link(poll, "next")


def test_original_style_clients_get_exact_http(server: int) -> None:  # noqa: F811  (the fixture)
    port = server
    form = b"name=exact&token=t"
    registered = exchange(
        port,
        b"POST /reversehttp HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: %d\r\n\r\n%s" % (port, len(form), form),
    )
    assert registered.startswith(b"HTTP/1.1 201"), registered[:200]
    assert re.search(rb"^Location: ", registered, re.M)
    url = link(registered, "first")

    cases = [
        (b"HEAD / HTTP/1.1\r\nX-Mixed-Case: yes\r\nhost: 127.0.0.1\r\nACCEPT: */*\r\n", "head"),
        (b"GET /custom HTTP/1.1\r\nHost: 127.0.0.1\r\n", "custom"),
        (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n", "get"),
    ]
    for request_head, kind in cases:
        got: dict[str, bytes] = {}

        def requester(head: bytes = request_head, got: dict[str, bytes] = got) -> None:
            got["r"] = exchange(port, head.replace(b"/", b"/relay/exact/", 1) + b"Connection: close\r\n\r\n")

        thread = threading.Thread(target=requester)
        thread.start()
        seen, url = serve_one(port, url)
        thread.join(30)
        response = got["r"]
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        names = [line.partition(b":")[0].lower() for line in lines[1:]]
        assert names.count(b"date") == 1 and names.count(b"server") == 1, head
        assert b"\r\nServer: Stock/1.0" in head, head  # the application's, not the relay's
        if kind == "head":
            # Names, case and order as the requester wrote them.
            assert b"\r\nX-Mixed-Case: yes\r\nhost: 127.0.0.1\r\nACCEPT: */*\r\n" in seen, seen
            assert lines[0] == b"HTTP/1.1 200 OK" and body == b""
            assert b"\r\nContent-Length: %d" % len(PAGE) in head
        elif kind == "custom":
            assert lines[0] == b"HTTP/1.1 299 Custom Reason" and body == b"no length: to the end"
        else:
            assert body == PAGE
