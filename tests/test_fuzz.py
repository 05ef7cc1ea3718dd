"""Fuzzing (issues 6 and 13): every endpoint's input and ``message/http`` parsing. No 5xx, no hang, still healthy.

The endpoint fuzz takes its paths from the app's own routing table, so a route added later is
fuzzed too. The app runs once per test on a blocking portal (hypothesis drives sync tests); its
outbound HTTP is an in-process app, so random callbacks and topics reach nobody real. Every request has
a deadline, and /healthz must still answer 200 after each one.

Endless responses (the dashboard's event stream, :data:`STREAMS`) are fuzzed apart: the in-process
client buffers a whole response, so a valid request to a stream would only end at the deadline.
Their test reads the response head and the first chunk, then goes away as a browser tab does.

Values are malformed on purpose (issue 13, L1): digits that ``str.isdigit`` takes and ``int``
refuses (``²``), 5,000-digit numbers, non-ASCII signatures, header values with bytes outside ASCII
and control characters, replies whose headers hold control characters. The app has a subscription
with a secret, so that proofs of ownership are checked against a real secret, not refused early.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace
from urllib.parse import quote, urlencode

import anyio
import httpx
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from hub.signing import ownership_proof
from relay import wire
from reversehub.core.settings import Settings
from reversehub.server.app import create_app
from tests.conftest import started

FEED = b'<feed xmlns="http://www.w3.org/2005/Atom"><id>t</id><entry><id>1</id><title>x</title></entry></feed>'
REQUEST_DEADLINE = 5.0  # seconds; held polls end after poll_timeout (1 s in tests)
# Responses that never end while the server runs (server-sent events).
STREAMS = frozenset({"/dashboard/events"})
FUZZ = hsettings(
    max_examples=400,
    deadline=None,  # each request has its own deadline (REQUEST_DEADLINE)
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# message/http parsing ----------------------------------------------------------------------------
token = st.text(
    alphabet="!#$%&'*+-.^_`|~abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=12
)
latin1 = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=40
)
header = st.tuples(token, latin1)
framing = st.sampled_from(
    [
        b"",
        b"Content-Length: 0\r\n",
        b"Content-Length: 5\r\n",
        b"Content-Length: -1\r\n",
        b"Content-Length: 99999999999\r\n",
        b"Content-Length: 3\r\nContent-Length: 4\r\n",
        b"Transfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: gzip, chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
    ]
)
chunked_body = st.lists(st.binary(max_size=20), max_size=4).map(
    lambda parts: b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
)
mangled = st.sampled_from(
    [b"", b"ffffffffffffffffff\r\n", b"5\r\nab", b"zz\r\n", b"3;ext=1\r\nabc\r\n0\r\nX: y\r\n\r\n"]
)


@st.composite
def http_messages(draw: st.DrawFn) -> bytes:
    """Bytes shaped like HTTP messages (requests and responses), valid or subtly broken."""
    if draw(st.booleans()):
        first = b"%s %s HTTP/%d.%d" % (
            draw(token).encode(),
            draw(st.sampled_from([b"/", b"*", b"http://x/y?z", b"/a b", b""])),
            draw(st.integers(0, 3)),
            draw(st.integers(0, 9)),
        )
    else:
        first = b"HTTP/1.%d %s %s" % (
            draw(st.integers(0, 2)),
            draw(st.sampled_from([b"200", b"204", b"304", b"99", b"1000", b"abc", b"101"])),
            draw(latin1).encode("latin-1"),
        )
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    head = first + eol + b"".join(f"{k}: {v}".encode("latin-1") + eol for k, v in draw(st.lists(header, max_size=6)))
    head += draw(framing).replace(b"\r\n", eol)
    body = draw(st.one_of(st.binary(max_size=40), chunked_body, mangled))
    message = head + eol + body
    return message * draw(st.integers(1, 3))  # pipelines


PARSERS = [wire.parse_request, wire.parse_requests, wire.parse_response, wire.parse_responses]


@hsettings(max_examples=400, deadline=500, database=None)
@given(data=st.one_of(st.binary(max_size=300), http_messages()), parser=st.sampled_from(PARSERS))
def test_wire_parsing_raises_only_wire_error(data: bytes, parser) -> None:
    try:
        parser(data)
    except wire.WireError:
        pass


@hsettings(max_examples=100, deadline=500, database=None)
@given(data=st.binary(min_size=1, max_size=200))
def test_wire_parsing_bounded_on_huge_heads(data: bytes) -> None:
    """A head past the limit is refused without scanning the whole buffer again and again."""
    data = data.replace(b"\n", b"x")  # one endless header line
    big = b"GET / HTTP/1.1\r\n" + b"X: " + data * (70_000 // len(data) + 1)
    for parser in PARSERS:
        with pytest.raises(wire.WireError):
            parser(big)


@hsettings(max_examples=200, deadline=500, database=None)
@given(
    method=token,
    target=st.sampled_from(["/", "/a?b=c", "http://x/y", "*"]),
    headers=st.lists(header, max_size=5),
    body=st.binary(max_size=100),
)
def test_wire_request_round_trip(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
    headers = [(k, v.strip(" \t")) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding")]
    parsed = wire.parse_request(wire.serialize_request(wire.HttpRequest(method, target, headers, body)))
    assert (parsed.method, parsed.target, parsed.body) == (method, target, body)


# Every endpoint ----------------------------------------------------------------------------------
def route_templates(routes: list[BaseRoute], prefix: str = "") -> list[tuple[str, frozenset[str]]]:
    out: list[tuple[str, frozenset[str]]] = []
    for route in routes:
        if isinstance(route, Route):
            out.append((prefix + route.path, frozenset(route.methods or {"GET"})))
        elif isinstance(route, Mount):
            out.append((prefix + route.path + "/{rest}", frozenset({"GET", "POST", "PUT", "DELETE"})))
            out.extend(route_templates(list(route.routes or []), prefix + route.path))
    return out


@pytest.fixture
def live_app(settings: Settings) -> Iterator[tuple[BlockingPortal, httpx.AsyncClient, list]]:
    async def outbound(scope, receive, send) -> None:
        """Every callback confirms every intent and takes every delivery; every topic is a small feed."""
        request = Request(scope, receive)
        if challenge := request.query_params.get("hub.challenge"):
            response = PlainTextResponse(challenge)
        elif request.method == "GET":
            response = Response(FEED, media_type="application/atom+xml")
        else:
            response = Response(status_code=204)
        await response(scope, receive, send)

    fuzz_settings = replace(
        settings,
        admin_token="fuzz-admin",
        rate_limit_window=0.0,
        trusted_networks=("0.0.0.0/0",),  # fat pings from the fuzzer reach the hub
        poll_timeout=0.2,
        unavailable_timeout=0.05,
    )
    app = create_app(fuzz_settings, transport=httpx.ASGITransport(app=outbound))
    with start_blocking_portal(backend="asyncio") as portal:
        with portal.wrap_async_context_manager(started(app)) as client:
            portal.call(subscribed, client)
            yield portal, client, route_templates(app.routes) + portal.call(relay_urls, client)


OWNED = {"hub.callback": "http://cb.test/x", "hub.topic": "https://t.test/feed"}
SECRET = "fuzz-secret"


async def subscribed(client: httpx.AsyncClient) -> None:
    """Subscribe :data:`OWNED` with :data:`SECRET` and wait until it is stored (a valid proof answers 200)."""
    r = await client.post("/hub", data={"hub.mode": "subscribe", **OWNED, "hub.secret": SECRET})
    assert r.status_code == 202
    with anyio.fail_after(REQUEST_DEADLINE):
        while True:
            ts = int(time.time())
            proof = ownership_proof(SECRET, "status", OWNED["hub.callback"], OWNED["hub.topic"], ts)
            params = {**OWNED, "hub.timestamp": str(ts), "hub.signature": proof}
            if (await client.get("/hub/status", params=params)).status_code == 200:
                return
            await anyio.sleep(0.02)


async def relay_urls(client: httpx.AsyncClient) -> list[tuple[str, frozenset[str]]]:
    """A real registration's private, request and public URLs, so fuzzed replies reach the parser."""
    r = await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})
    if r.status_code not in (200, 201, 204):
        return []
    urls = [r.headers.get("location", ""), *re.findall(r"<([^>]+)>", ", ".join(r.headers.get_list("link")))]
    return [(httpx.URL(u).path, frozenset({"GET", "POST", "PUT", "DELETE"})) for u in urls if u]


FORM_KEYS = [
    "hub.mode",
    "hub.topic",
    "hub.callback",
    "hub.url",
    "hub.secret",
    "hub.lease_seconds",
    "hub.timestamp",
    "hub.signature",
    "hub.since",
    "seconds",
    "name",
    "token",
    "lease",
]
# Numbers as they should not be written: digits int() refuses (superscripts), digits of other
# scripts, more digits than int() parses (4,300), signs, spaces, fractions.
ODD_NUMBERS = ["²", "³", "٣", "１２", "1" * 5000, "9" * 19, "+1", " 1", "1_000", "1e3", "0x10", "-0", "1.5"]
FORM_VALUES = st.one_of(
    st.sampled_from(["subscribe", "unsubscribe", "publish", "http://cb.test/x", "https://t.test/feed", "-1", "0",
                     "99999999999999999999", "a" * 300, "alice", "ALICE", "xn--", "a..b", "", "é", "\x00",
                     "a\r\nb", "\x7f", *ODD_NUMBERS]),
    st.integers(min_value=0, max_value=2**40).map(str),
    st.text(max_size=30),
)  # fmt: skip
forms = st.lists(st.tuples(st.sampled_from(FORM_KEYS), FORM_VALUES), max_size=8).map(lambda f: urlencode(f).encode())
header_names = st.sampled_from(
    ["content-type", "content-length", "accept", "authorization", "cookie", "x-csrf-token", "transfer-encoding",
     "link", "x-hub-signature", "if-none-match", "origin", "x-fuzz"]
)  # fmt: skip
header_values = st.one_of(
    st.sampled_from(["application/x-www-form-urlencoded", "message/http", "application/http", "text/plain",
                     "multipart/form-data; boundary=x", "Bearer fuzz-admin", "Basic Og==", "Basic !!", "chunked",
                     "1" * 5000]),
    # Latin-1 bytes as a client sends them: \xe9 is "é" to a server that decodes headers as Latin-1.
    st.sampled_from([b"Bearer \xe9", b"sha256=\xe9", b"reversehub_admin=\xe9", b"\xe9", "²".encode()]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
    # Any byte but CR and LF (a server's HTTP parser splits on those): what a client may send.
    st.binary(max_size=30).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
)  # fmt: skip
segment = st.one_of(
    st.sampled_from(["alice", "x", "", "..", "%2F", "a" * 70, "ü", "²", "1" * 5000]), st.text(max_size=12)
)
# Replies (POSTed to request URLs) whose header values hold control characters (issue 13, L2).
control_replies = st.builds(
    lambda ctl, value: b"HTTP/1.1 200 OK\r\nX-Fuzz: a%sb\r\nContent-Length: 2\r\n\r\n%s" % (ctl, value),
    st.sampled_from([b"\x00", b"\x01", b"\x1b", b"\x7f", b"\r", b"\n", b"\x0b", b"\x0c"]),
    st.sampled_from([b"ok", b"\x00\x00"]),
)


@st.composite
def requests(draw: st.DrawFn, templates: list[tuple[str, frozenset[str]]]) -> tuple[str, str, dict, bytes]:
    template, methods = draw(st.sampled_from(templates))
    path = re.sub(r"\{[^}]+\}", lambda _: quote(draw(segment), safe="") or "x", template)
    method = draw(
        st.one_of(st.sampled_from(sorted(methods)), st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]))
    )
    query = urlencode(draw(st.lists(st.tuples(st.sampled_from(FORM_KEYS), FORM_VALUES), max_size=3)))
    headers = dict(draw(st.lists(st.tuples(header_names, header_values), max_size=4)))
    headers.pop("content-length", None)  # httpx frames the body itself; a lying length is the server's (h11's) job
    headers.pop("transfer-encoding", None)
    if draw(st.booleans()):
        headers["content-type"] = "application/x-www-form-urlencoded"
        body = draw(forms)
    else:
        body = draw(st.one_of(st.binary(max_size=200), http_messages(), control_replies))
    return method, path + ("?" + query if query else ""), headers, body


def test_every_endpoint_survives_fuzzing(live_app) -> None:
    portal, client, templates = live_app
    templates = [t for t in templates if t[0] not in STREAMS]
    assert len(templates) >= 5

    async def send(method: str, url: str, headers: dict, body: bytes) -> int:
        with anyio.fail_after(REQUEST_DEADLINE):
            response = await client.request(method, url, headers=headers, content=body)
        with anyio.fail_after(REQUEST_DEADLINE):
            health = await client.get("/healthz")
        assert health.status_code == 200, "server unhealthy after the request"
        return response.status_code

    @FUZZ
    @given(request=requests(templates))
    def check(request: tuple[str, str, dict, bytes]) -> None:
        status = portal.call(send, *request)
        # A public relay URL answers 502/504 by design (no poller, no valid reply: DESIGN.md); nothing 500s.
        relayed = request[1].startswith("/relay/") and status in (502, 504)
        assert status < 500 or relayed, f"{request[0]} {request[1]} -> {status}"

    check()


odd_numbers = st.one_of(st.sampled_from(ODD_NUMBERS), st.integers(0, 2**70).map(str), st.text(max_size=20))
signatures = st.one_of(
    st.text(max_size=70),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=64, max_size=64),
    st.sampled_from(["é", "é" * 64, "\x00" * 64, "sha256=" + "0" * 64]),
)


def test_proofs_and_numbers_never_answer_5xx(live_app) -> None:
    """/hub/status, /hub/replay and /sup with malformed numbers and signatures, against a real
    subscription with a secret and a current timestamp, so that a signature is compared, not refused early."""
    portal, client, _ = live_app

    async def send(timestamp: str, signature: str, since: str, seconds: str) -> list[int]:
        params = {**OWNED, "hub.timestamp": timestamp, "hub.signature": signature}
        with anyio.fail_after(REQUEST_DEADLINE):
            return [
                (await client.get("/hub/status", params=params)).status_code,
                (await client.post("/hub/replay", data={**params, "hub.since": since})).status_code,
                (await client.get("/sup", params={"seconds": seconds})).status_code,
            ]

    @hsettings(FUZZ, max_examples=200)
    @given(
        timestamp=st.one_of(st.just("now"), odd_numbers), signature=signatures, since=odd_numbers, seconds=odd_numbers
    )
    def check(timestamp: str, signature: str, since: str, seconds: str) -> None:
        timestamp = str(int(time.time())) if timestamp == "now" else timestamp
        codes = portal.call(send, timestamp, signature, since, seconds)
        assert all(code < 500 for code in codes), f"{timestamp[:20]!r} {signature[:20]!r} {since[:20]!r} -> {codes}"

    check()


@pytest.fixture
def live_admin(
    settings: Settings,
) -> Iterator[tuple[BlockingPortal, httpx.AsyncClient, httpx.AsyncClient, list, ASGIApp]]:
    """The admin side (reversehub.server.app.create_admin_app) of a started app, and its main client."""
    from reversehub.server.app import create_admin_app

    async def nobody(scope, receive, send) -> None:
        await Response(status_code=404)(scope, receive, send)

    app = create_app(
        replace(settings, admin_token="fuzz-admin", rate_limit_window=0.0), transport=httpx.ASGITransport(app=nobody)
    )
    admin_app = create_admin_app(app)
    with start_blocking_portal(backend="asyncio") as portal:
        with portal.wrap_async_context_manager(started(app)) as client:
            transport = httpx.ASGITransport(app=admin_app)
            with portal.wrap_async_context_manager(
                httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8001")
            ) as admin:
                yield portal, client, admin, route_templates(admin_app.routes), admin_app


def test_every_admin_endpoint_survives_fuzzing(live_admin) -> None:
    portal, client, admin, templates, _ = live_admin
    templates = [t for t in templates if t[0] not in STREAMS]
    assert len(templates) >= 10

    async def send(method: str, url: str, headers: dict, body: bytes) -> int:
        with anyio.fail_after(REQUEST_DEADLINE):
            response = await admin.request(method, url, headers=headers, content=body)
        with anyio.fail_after(REQUEST_DEADLINE):
            assert (await client.get("/healthz")).status_code == 200, "server unhealthy after the request"
        return response.status_code

    @hsettings(FUZZ, max_examples=200)
    @given(request=requests(templates))
    def check(request: tuple[str, str, dict, bytes]) -> None:
        status = portal.call(send, *request)
        assert status < 500, f"{request[0]} {request[1]} -> {status}"

    check()


async def response_head(app: ASGIApp, method: str, url: str, headers: dict, body: bytes) -> int:
    """The status of a response that may never end: the app runs until its first body chunk (or its
    end), then the request is abandoned, as a client that closes the connection."""
    target = httpx.URL(url)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "headers": [(k.lower().encode("latin-1"), v if isinstance(v, bytes) else v.encode("utf-8")) for k, v in
                    headers.items()],
        "scheme": "http",
        "path": target.path,
        "raw_path": target.raw_path.split(b"?")[0],
        "query_string": target.query,
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
        "root_path": "",
    }  # fmt: skip
    status: list[int] = []
    answered = anyio.Event()
    sent = False

    async def receive() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])
        elif message["type"] == "http.response.body":
            answered.set()

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            await app(scope, receive, send)
            answered.set()

        tg.start_soon(run)
        await answered.wait()
        tg.cancel_scope.cancel()
    assert status, "the app ended without a response"
    return status[0]


def test_streams_survive_fuzzing(live_admin) -> None:
    """The endless endpoints, fuzzed like the others (a valid token included), each request bounded."""
    portal, client, _, templates, app = live_admin
    streams = [t for t in templates if t[0] in STREAMS]
    assert streams, "the stream endpoints moved: update STREAMS"

    async def send(method: str, url: str, headers: dict, body: bytes) -> int:
        with anyio.fail_after(REQUEST_DEADLINE):
            status = await response_head(app, method, url, headers, body)
        with anyio.fail_after(REQUEST_DEADLINE):
            assert (await client.get("/healthz")).status_code == 200, "server unhealthy after the request"
        return status

    @hsettings(FUZZ, max_examples=100)
    @given(request=requests(streams), token=st.booleans())
    def check(request: tuple[str, str, dict, bytes], token: bool) -> None:
        method, url, headers, body = request
        if token:  # the stream itself, not only its refusals
            headers = {**headers, "authorization": "Bearer fuzz-admin"}
        status = portal.call(send, method, url, headers, body)
        assert status < 500, f"{method} {url} -> {status}"

    check()
