"""``message/http`` and ``application/http``: HTTP messages as bodies (RFC 9112, RFC 2616 19.1).

ReverseHttp carries whole HTTP requests to pollers and whole HTTP responses back as message bodies.
This module parses and writes them; it needs only the standard library so clients can import it.

Rules, and why:

- A request without ``Content-Length`` or chunked ``Transfer-Encoding`` has an empty body (RFC 9112
  6.3), except that a lone request (``parse_request``) may run its body to the end of the data.
- A response without either runs its body to the end of the data (RFC 9112 6.3 rule 8). The original
  ReverseHttp clients (``reversehttp.py``, ``httpd.js``) post replies that way.
- Bare ``LF`` line ends are accepted (RFC 9112 2.2); obsolete line folding is unfolded into a space.
- Header names must be tokens and values free of CR, LF and NUL; strings are latin-1 on the wire.
- ``serialize_*`` always writes a self-delimiting message: a ``Content-Length`` is added when the
  headers carry neither it nor chunked ``Transfer-Encoding``; chunked messages are written chunked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "HttpRequest",
    "HttpResponse",
    "WireError",
    "bodiless",
    "parse_request",
    "parse_requests",
    "parse_response",
    "parse_responses",
    "serialize_request",
    "serialize_response",
]

MAX_HEADERS = 100
MAX_HEAD_SIZE = 64 * 1024

_TOKEN = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_VERSION = re.compile(rb"^HTTP/(\d)\.(\d)$")
_BAD_VALUE = re.compile(r"[\r\n\x00]")
_BAD_REASON = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")  # controls other than HTAB
_NO_BODY_STATUS = (204, 304)


class WireError(ValueError):
    """The data is not a valid HTTP message (the text says what is wrong, briefly)."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    version: str = "1.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        return _first(self.headers, name, default)


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    reason: str = ""
    version: str = "1.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        return _first(self.headers, name, default)


def _first(headers: list[tuple[str, str]], name: str, default: str | None) -> str | None:
    lname = name.lower()
    for key, value in headers:
        if key.lower() == lname:
            return value
    return default


# Parsing ------------------------------------------------------------------------------------------


class _Reader:
    """A cursor over one buffer that may hold several messages."""

    def __init__(self, data: bytes, max_headers: int, max_head: int) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireError("message must be bytes")
        self.data = bytes(data)
        self.pos = 0
        self.max_headers = max_headers
        self.max_head = max_head

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def skip_blank_lines(self) -> None:
        # RFC 9112 2.2: a server SHOULD ignore at least one empty line before a request-line.
        while self.data.startswith(b"\r\n", self.pos) or self.data.startswith(b"\n", self.pos):
            self.pos += 2 if self.data[self.pos] == 13 else 1

    def line(self, limit: int) -> bytes:
        end = self.data.find(b"\n", self.pos, self.pos + limit + 1)
        if end < 0:
            if len(self.data) - self.pos > limit:
                raise WireError("header section too large")
            raise WireError("incomplete message head")
        line = self.data[self.pos : end]
        self.pos = end + 1
        return line[:-1] if line.endswith(b"\r") else line

    def head(self) -> tuple[bytes, list[tuple[str, str]]]:
        start = self.pos
        first = self.line(self.max_head)
        headers: list[tuple[str, str]] = []
        while True:
            line = self.line(self.max_head)
            if self.pos - start > self.max_head:
                raise WireError("header section too large")
            if not line:
                break
            if line[:1] in (b" ", b"\t"):
                if not headers:
                    raise WireError("continuation line before any header")
                last_name, last_value = headers[-1]
                headers[-1] = (last_name, f"{last_value} {line.strip().decode('latin-1')}".strip())
                continue
            raw_name, sep, raw_value = line.partition(b":")
            if not sep or not _TOKEN.match(raw_name):
                raise WireError("malformed header line")
            if b"\x00" in raw_value:
                raise WireError("NUL in header value")
            headers.append((raw_name.decode("latin-1"), raw_value.strip(b" \t").decode("latin-1")))
            if len(headers) > self.max_headers:
                raise WireError("too many headers")
        return first, headers

    def body(self, headers: list[tuple[str, str]], to_end: bool, te: str | None) -> bytes:
        """The body framed by ``headers``; ``te``: their first Transfer-Encoding value, if any."""
        if te is not None:
            if te.replace(" ", "").lower().split(",")[-1] != "chunked":
                raise WireError("unsupported transfer-encoding")
            return self.chunked()
        lengths = {v.strip() for k, v in headers if k.lower() == "content-length"}
        if lengths:
            if len(lengths) > 1:
                raise WireError("conflicting content-length")
            raw = lengths.pop()
            if not raw.isdigit():
                raise WireError("invalid content-length")
            n = int(raw)
            if len(self.data) - self.pos < n:
                raise WireError("body shorter than content-length")
            body = self.data[self.pos : self.pos + n]
            self.pos += n
            return body
        if to_end:
            body = self.data[self.pos :]
            self.pos = len(self.data)
            return body
        return b""

    def chunked(self) -> bytes:
        parts: list[bytes] = []
        while True:
            size_line = self.line(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                raise WireError("invalid chunk size") from None
            if size < 0:
                raise WireError("invalid chunk size")
            if size == 0:
                break
            if len(self.data) - self.pos < size:
                raise WireError("incomplete chunk")
            parts.append(self.data[self.pos : self.pos + size])
            self.pos += size
            if self.line(2):
                raise WireError("missing CRLF after chunk")
        while self.line(self.max_head):  # trailer section, dropped
            pass
        return b"".join(parts)


def _version(raw: bytes) -> str:
    m = _VERSION.match(raw)
    if not m:
        raise WireError("invalid HTTP version")
    return f"{m.group(1).decode()}.{m.group(2).decode()}"


def _strip_framing(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """After de-chunking, the body is plain: replace Transfer-Encoding by its Content-Length."""
    return [(k, v) for k, v in headers if k.lower() != "transfer-encoding"]


def _read_request(reader: _Reader, to_end: bool) -> HttpRequest:
    reader.skip_blank_lines()
    first, headers = reader.head()
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[1]:
        raise WireError("malformed request line")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise WireError("invalid method")
    if any(c <= 32 or c == 127 for c in target):
        raise WireError("invalid request target")
    te = _first(headers, "transfer-encoding", None)
    chunked = te is not None
    body = reader.body(headers, to_end, te=te)
    if chunked:
        headers = [*_strip_framing(headers), ("Content-Length", str(len(body)))]
    return HttpRequest(method.decode("latin-1"), target.decode("latin-1"), headers, body, _version(version))


def _read_response(reader: _Reader, request_method: str | None = None) -> HttpResponse:
    reader.skip_blank_lines()
    first, headers = reader.head()
    version, _, rest = first.partition(b" ")
    code, _, reason = rest.partition(b" ")
    if len(code) != 3 or not code.isdigit() or not 100 <= int(code) <= 599:
        raise WireError("invalid status code")
    status = int(code)
    if _BAD_REASON.search(reason):
        raise WireError("invalid reason phrase")
    te = _first(headers, "transfer-encoding", None)
    chunked = te is not None
    no_body = bodiless(status, request_method)
    body = b"" if no_body else reader.body(headers, to_end=True, te=te)
    if chunked and not no_body:
        headers = [*_strip_framing(headers), ("Content-Length", str(len(body)))]
    return HttpResponse(status, headers, body, reason.decode("latin-1").strip(), _version(version))


def parse_request(data: bytes, *, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD_SIZE) -> HttpRequest:
    """One request (``message/http``); without framing headers its body runs to the end of ``data``."""
    reader = _Reader(data, max_headers, max_head)
    request = _read_request(reader, to_end=True)
    if not reader.at_end():
        raise WireError("trailing data after request")
    return request


def parse_requests(
    data: bytes, *, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD_SIZE, max_count: int = 1000
) -> list[HttpRequest]:
    """A pipeline of requests (``application/http``), in order; at least one."""
    reader = _Reader(data, max_headers, max_head)
    requests: list[HttpRequest] = []
    while True:
        requests.append(_read_request(reader, to_end=False))
        reader.skip_blank_lines()
        if reader.at_end():
            return requests
        if len(requests) >= max_count:
            raise WireError("too many messages in pipeline")


def parse_response(
    data: bytes, *, max_headers: int = MAX_HEADERS, max_head: int = MAX_HEAD_SIZE, request_method: str | None = None
) -> HttpResponse:
    """One response (``message/http``); without framing headers its body runs to the end of ``data``."""
    reader = _Reader(data, max_headers, max_head)
    response = _read_response(reader, request_method)
    reader.skip_blank_lines()
    if not reader.at_end():
        raise WireError("trailing data after response")
    return response


def parse_responses(
    data: bytes,
    *,
    max_headers: int = MAX_HEADERS,
    max_head: int = MAX_HEAD_SIZE,
    max_count: int = 1000,
    request_methods: list[str] | None = None,
) -> list[HttpResponse]:
    """A pipeline of responses (``application/http``), in order; the last may run to the end.
    ``request_methods``: the methods of the requests they answer, in order (a HEAD's has no body)."""
    reader = _Reader(data, max_headers, max_head)
    responses: list[HttpResponse] = []
    methods = request_methods or []
    while True:
        method = methods[len(responses)] if len(responses) < len(methods) else None
        responses.append(_read_response(reader, method))
        reader.skip_blank_lines()
        if reader.at_end():
            return responses
        if len(responses) >= max_count:
            raise WireError("too many messages in pipeline")


# Writing ------------------------------------------------------------------------------------------


def _check_headers(headers: list[tuple[str, str]]) -> None:
    for name, value in headers:
        if not _TOKEN.match(name.encode("latin-1")):
            raise WireError(f"invalid header name {name!r}")
        if _BAD_VALUE.search(value):
            raise WireError(f"invalid value for header {name!r}")


def _write(first: str, headers: list[tuple[str, str]], body: bytes, no_body: bool, length_if_empty: bool) -> bytes:
    _check_headers(headers)
    lower = [k.lower() for k, _ in headers]
    chunked = "transfer-encoding" in lower
    out = [first]
    for name, value in headers:
        out.append(f"{name}: {value}")
    if chunked and no_body:
        out_body = b""
    elif chunked:
        out_body = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    else:
        if "content-length" in lower:
            declared = {v.strip() for k, v in headers if k.lower() == "content-length"}
            if declared != {str(len(body))} and not no_body:
                raise WireError("content-length does not match the body")
        elif not no_body and (body or length_if_empty):
            out.append(f"Content-Length: {len(body)}")
        out_body = b"" if no_body else body
    try:
        head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
    except UnicodeEncodeError:
        raise WireError("header text is not latin-1") from None
    return head + out_body


def serialize_request(r: HttpRequest) -> bytes:
    """The request as ``message/http`` bytes (self-delimiting, so it also fits a pipeline)."""
    if not _TOKEN.match(r.method.encode("latin-1", "replace")) or not r.target or any(c in r.target for c in " \r\n"):
        raise WireError("invalid request line")
    # A request without Content-Length has no body (RFC 9112 6.3), so an empty one needs no header.
    return _write(f"{r.method} {r.target} HTTP/{r.version}", r.headers, r.body, False, length_if_empty=False)


def bodiless(status: int, request_method: str | None = None) -> bool:
    """Whether a response has no body whatever its Content-Length says (RFC 9112 6.3 rule 1): one to
    a HEAD, a 1xx, a 204 or a 304. Its Content-Length, if any, tells the size a GET would have got."""
    return status < 200 or status in _NO_BODY_STATUS or request_method == "HEAD"


def serialize_response(r: HttpResponse, request_method: str | None = None) -> bytes:
    """The response as ``message/http`` bytes (self-delimiting, so it also fits a pipeline);
    ``request_method``: the method of the request it answers (a HEAD's is written without body)."""
    if not 100 <= r.status <= 599 or _BAD_VALUE.search(r.reason):
        raise WireError("invalid status line")
    no_body = bodiless(r.status, request_method)
    # A response without Content-Length runs to the end, so even an empty body gets one (pipelines).
    return _write(f"HTTP/{r.version} {r.status} {r.reason}", r.headers, r.body, no_body, length_if_empty=True)
