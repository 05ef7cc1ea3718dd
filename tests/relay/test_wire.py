"""message/http and application/http parsing and writing (relay/wire.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.wire import (
    HttpRequest,
    HttpResponse,
    WireError,
    parse_request,
    parse_requests,
    parse_response,
    parse_responses,
    serialize_request,
    serialize_response,
)


def test_parse_request_keeps_everything() -> None:
    data = b"POST /a/b?c=d HTTP/1.0\r\nHost: x\r\nX-Dup: 1\r\nx-dup: 2\r\nContent-Length: 5\r\n\r\nhello"
    r = parse_request(data)
    assert (r.method, r.target, r.version, r.body) == ("POST", "/a/b?c=d", "1.0", b"hello")
    assert r.headers == [("Host", "x"), ("X-Dup", "1"), ("x-dup", "2"), ("Content-Length", "5")]
    assert r.header("x-DUP") == "1"


def test_parse_request_without_length_runs_to_end_but_pipeline_does_not() -> None:
    assert parse_request(b"PUT / HTTP/1.1\r\nHost: x\r\n\r\nrest").body == b"rest"
    reqs = parse_requests(b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\nContent-Length: 2\r\n\r\nokGET /3 HTTP/1.1\n\n")
    assert [(r.target, r.body) for r in reqs] == [("/1", b""), ("/2", b"ok"), ("/3", b"")]


def test_parse_response_body_runs_to_end_without_length() -> None:
    # What the original reversehttp.py / httpd.js post: no Content-Length at all.
    r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nhello\r\nworld")
    assert (r.status, r.reason, r.version, r.body) == (200, "OK", "1.0", b"hello\r\nworld")


def test_parse_response_lf_only_and_empty_reason() -> None:
    r = parse_response(b"HTTP/1.1 404\nX: y\n\n")
    assert (r.status, r.reason, r.headers, r.body) == (404, "", [("X", "y")], b"")


def test_chunked_is_decoded() -> None:
    data = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nT: x\r\n\r\n"
    r = parse_response(data)
    assert r.body == b"abcde"
    assert r.header("transfer-encoding") is None and r.header("content-length") == "5"


def test_no_body_statuses_and_pipelined_responses() -> None:
    data = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxHTTP/1.1 500 E\r\n\r\ntail"
    rs = parse_responses(data)
    assert [(r.status, r.body) for r in rs] == [(204, b""), (200, b"x"), (500, b"tail")]


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.1",
        b"GET / HTTP/x.y\r\n\r\n",
        b"G(T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 9\r\n\r\nshort",
        b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\ntrailing",
    ],
)
def test_bad_requests(data: bytes) -> None:
    with pytest.raises(WireError):
        parse_request(data)


@pytest.mark.parametrize(
    "data", [b"", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/1.1 600 X\r\n\r\n", b"HTP/1.1 200 OK\r\n\r\n", b"hello"]
)
def test_bad_responses(data: bytes) -> None:
    with pytest.raises(WireError):
        parse_response(data)


def test_limits() -> None:
    many = b"GET / HTTP/1.1\r\n" + b"".join(b"H%d: v\r\n" % i for i in range(11)) + b"\r\n"
    with pytest.raises(WireError, match="too many headers"):
        parse_request(many, max_headers=10)
    big = b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n"
    with pytest.raises(WireError, match="too large"):
        parse_request(big, max_head=100)


def test_serialize_adds_length_and_refuses_bad_headers() -> None:
    assert serialize_request(HttpRequest("GET", "/x", [("Host", "h")], b"")) == b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n"
    assert serialize_response(HttpResponse(200, [], b"ab", "OK")) == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"
    with pytest.raises(WireError):
        serialize_response(HttpResponse(200, [("X", "a\r\nInjected: 1")], b""))
    with pytest.raises(WireError):
        serialize_request(HttpRequest("GET", "/x y", [], b""))
    with pytest.raises(WireError):
        serialize_request(HttpRequest("POST", "/", [("Content-Length", "3")], b"ab"))


def test_serialize_chunked_roundtrip() -> None:
    data = serialize_request(HttpRequest("POST", "/", [("Transfer-Encoding", "chunked")], b"abc"))
    assert data.endswith(b"3\r\nabc\r\n0\r\n\r\n")
    assert parse_request(data).body == b"abc"


_tokens = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_!", min_size=1, max_size=12)
_values = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=30).map(
    str.strip
)
_headers = st.lists(
    st.tuples(_tokens.filter(lambda n: n.lower() not in ("content-length", "transfer-encoding")), _values),
    max_size=6,
)


@given(
    st.sampled_from(["GET", "POST", "PUT", "X-CUSTOM"]),
    st.from_regex(r"\A/[a-z0-9/?=&%]{0,20}\Z"),
    _headers,
    st.binary(max_size=200),
)
def test_request_roundtrip(method: str, target: str, headers: list[tuple[str, str]], body: bytes) -> None:
    req = HttpRequest(method, target, headers, body)
    parsed = parse_requests(serialize_request(req) * 2)
    assert len(parsed) == 2
    for p in parsed:
        assert (p.method, p.target, p.body) == (method, target, body)
        assert p.headers[: len(headers)] == headers


@given(st.integers(200, 599).filter(lambda s: s not in (204, 304)), _headers, st.binary(max_size=200))
def test_response_roundtrip(status: int, headers: list[tuple[str, str]], body: bytes) -> None:
    resp = HttpResponse(status, headers, body, "Reason Here")
    parsed = parse_responses(serialize_response(resp) * 2)
    assert [(p.status, p.reason, p.body) for p in parsed] == [(status, "Reason Here", body)] * 2
