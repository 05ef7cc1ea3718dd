"""Envelopes: how queued requests go out in a poll response and how replies come back.

Three envelope types, chosen by the poller's ``Accept`` (spec "Waiting for a request to arrive"):

- ``message/http`` (the default): one request, as the requester sent it.
- ``application/http``: a pipeline of up to ``max_pipeline`` requests, only when ``Accept`` names it;
  the reply must then be a pipeline with one response per request, in order.
- ``application/json`` (the Second Life COMET variant, for clients that cannot build HTTP text):
  ``{"method", "request-uri", "http-version", "headers": [[name, value], ...], "body"}``; the reply
  may be ``{"status", "reason", "headers", "body"}``. ``body`` is text when the bytes are UTF-8,
  otherwise base64 with ``"body-encoding": "base64"``.

Replies labelled ``application/x-www-form-urlencoded`` are read as ``message/http`` (the spec allows
it: some client libraries cannot set a Content-Type); if the body really is a form, the first field
holding an HTTP response is used.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from typing import Any
from urllib.parse import parse_qsl

from relay.errors import InvalidInput
from relay.wire import (
    HttpRequest,
    HttpResponse,
    WireError,
    parse_request,
    parse_response,
    parse_responses,
    serialize_response,
)

MESSAGE = "message/http"
PIPELINE = "application/http"
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def _accepted(accept: str) -> set[str]:
    types = set()
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue
        types.add(media.lower())
    return types


def choose(accept: str | None) -> str:
    """The envelope type for a poll with this ``Accept`` header."""
    return _choose(accept) if accept else MESSAGE


# Pollers send the same few Accept values again and again.
@functools.lru_cache(maxsize=256)
def _choose(accept: str) -> str:
    types = _accepted(accept)
    if PIPELINE in types:
        return PIPELINE
    if JSON in types and MESSAGE not in types:
        return JSON
    return MESSAGE


def _body_fields(body: bytes) -> dict[str, Any]:
    try:
        return {"body": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "body-encoding": "base64"}


def request_json(message: bytes) -> bytes:
    r: HttpRequest = parse_request(message)
    doc = {
        "method": r.method,
        "request-uri": r.target,
        "http-version": r.version,
        "headers": [[k, v] for k, v in r.headers],
        **_body_fields(r.body),
    }
    return json.dumps(doc).encode("utf-8")


def _response_from_json(doc: Any) -> HttpResponse:
    if not isinstance(doc, dict):
        raise InvalidInput("JSON reply must be an object")
    status = doc.get("status")
    headers = doc.get("headers", [])
    body = doc.get("body", "")
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise InvalidInput("JSON reply needs an integer status 200-599")
    if not isinstance(headers, list) or not all(
        isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h) for h in headers
    ):
        raise InvalidInput("JSON reply headers must be [name, value] pairs")
    if not isinstance(body, str):
        raise InvalidInput("JSON reply body must be a string")
    try:
        raw = base64.b64decode(body, validate=True) if doc.get("body-encoding") == "base64" else body.encode("utf-8")
    except binascii.Error:
        raise InvalidInput("JSON reply body is not base64") from None
    pairs = [(k, v) for k, v in headers if k.lower() not in ("content-length", "transfer-encoding")]
    response = HttpResponse(status, pairs, raw, str(doc.get("reason", "")))
    try:
        serialize_response(response)  # validates names and values
    except WireError as exc:
        raise InvalidInput(f"invalid reply: {exc}") from None
    return response


def _form_reply(body: bytes) -> bytes:
    if body.lstrip().startswith(b"HTTP/"):
        return body
    for _, value in parse_qsl(body.decode("latin-1"), encoding="latin-1"):
        if value.startswith("HTTP/"):
            return value.encode("latin-1")
    return body


def request_method(message: bytes) -> str:
    """The method of a queued request (its bytes begin with the request line)."""
    return message[: message.find(b" ")].decode("latin-1")


def parse_reply(body: bytes, content_type: str | None, methods: list[str]) -> list[HttpResponse]:
    """The responses a reply carries, one per request, whose ``methods`` are given in order (a reply
    to a HEAD has no body whatever its Content-Length says, RFC 9112 6.3); or InvalidInput (the
    poller gets 400)."""
    count = len(methods)
    media = (content_type or "").split(";")[0].strip().lower()
    try:
        if media == JSON:
            doc = json.loads(body)
            docs = doc if isinstance(doc, list) else [doc]
            responses = [_response_from_json(d) for d in docs]
        else:
            if media == FORM:
                body = _form_reply(body)
            if count == 1:
                responses = [parse_response(body, request_method=methods[0])]
            else:
                responses = parse_responses(body, max_count=count, request_methods=methods)
    except (WireError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
        raise InvalidInput(f"invalid reply: {exc}") from None
    if len(responses) != count:
        raise InvalidInput(f"reply has {len(responses)} responses for {count} requests")
    for response in responses:
        if response.status < 200:
            raise InvalidInput("a reply must be a final (2xx-5xx) response")
        for name, value in response.headers:
            # RFC 9110 5.5: no control character but HTAB in a field value. The requester's server
            # refuses to send one (uvicorn drops the connection), so the reply is refused here.
            if _CONTROL.search(value):
                raise InvalidInput(f"invalid reply: control character in header {name!r}")
    return responses
