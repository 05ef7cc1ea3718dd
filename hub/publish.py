"""Publish intake: what a ``POST /publish`` (or ``hub.mode=publish`` on ``/hub``) asks for.

DESIGN.md: a form ``hub.mode=publish&hub.url=T`` (repeatable) says "topic T changed, fetch it"
(PubSubHubbub 0.4 publish ping). Other hubs and test suites spell the topic ``hub.url[]`` or
``hub.topic``; all three are accepted. Any other body with ``?hub.topic=T`` is a fat ping: "deliver
this body as it is, with its Content-Type".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl

from starlette.datastructures import FormData

from hub.errors import BadRequest
from hub.subscriptions import check_url

FORM = "application/x-www-form-urlencoded"
MAX_PING_URLS = 100
# The answer to a fat ping names how many subscriptions it was queued for (docs/errors.md).
DELIVERIES_HEADER = "X-Hub-Deliveries"
# A form is parsed whole before anything looks at it: bound the work one request can ask for.
MAX_FIELDS = 1000


@dataclass(frozen=True)
class Ping:
    urls: tuple[str, ...]


@dataclass(frozen=True)
class FatPing:
    topic: str
    content_type: str
    body: bytes


def form_of(body: bytes) -> FormData:
    """A form body as the hub reads it: repeated fields kept in order, ``get`` giving the last."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("form body is not UTF-8") from None
    try:
        return FormData(cast(Any, parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_FIELDS)))
    except ValueError:
        raise BadRequest(f"form with more than {MAX_FIELDS} fields") from None


def is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == FORM


def ping_urls(form: FormData) -> tuple[str, ...]:
    raw = [*form.getlist("hub.url"), *form.getlist("hub.url[]"), *form.getlist("hub.topic")]
    urls: list[str] = [u for u in raw if isinstance(u, str) and u]
    if not urls:
        raise BadRequest("hub.url is required")
    if len(urls) > MAX_PING_URLS:
        raise BadRequest(f"at most {MAX_PING_URLS} hub.url per ping")
    return tuple(dict.fromkeys(check_url(u, "hub.url") for u in urls))


def parse(content_type: str | None, query_topic: str | None, body: bytes) -> Ping | FatPing:
    """A ``POST /publish`` as a ping or a fat ping; :class:`BadRequest` when it is neither."""
    if is_form(content_type):
        form = form_of(body)
        if form.get("hub.mode") == "publish" or "hub.url" in form or "hub.url[]" in form:
            return Ping(ping_urls(form))
        if query_topic is None and "hub.topic" in form:
            return Ping(ping_urls(form))
    if query_topic is None:
        raise BadRequest("a fat ping needs ?hub.topic=; a ping needs hub.mode=publish&hub.url=")
    return FatPing(check_url(query_topic, "hub.topic"), content_type or "application/octet-stream", body)
