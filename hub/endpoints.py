"""HTTP endpoints: parse, authorize, call :class:`hub.service.Hub`, map the result. Errors map here only.

- ``POST /hub``: ``hub.mode=subscribe|unsubscribe`` -> 202 (verification follows), ``publish`` -> 204.
- ``POST /publish``: a ping or a fat ping (:mod:`hub.publish`) -> 204 once recorded durably; a fat
  ping's answer says in ``X-Hub-Deliveries`` for how many subscriptions it was queued (0: nobody
  subscribes to the topic).
- ``GET /sup``: our SUP document. ``GET /hub/status`` and ``POST /hub/replay``: a subscription's
  state and a replay of its retained deliveries, for the owner of its secret (:mod:`hub.signing`).

Each request is parsed once, here; who may publish is decided on that parse (:mod:`hub.authz`), and
the budgets per topic and per callback host (``--rate-limit``) are counted on it too. Numbers are
ASCII digits, at most :data:`MAX_DIGITS` of them, or 400: ``str.isdigit`` also accepts ``²`` and
other digits ``int`` refuses, and ``int`` refuses more than 4,300 digits.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from hub import publish, store, subscriptions
from hub.authz import authorize_publish
from hub.errors import (
    BadRequest,
    Busy,
    Forbidden,
    HubError,
    KeyReused,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from hub.service import PUBLISHED, Hub
from hub.store import idempotency
from reversehub.core import limits
from reversehub.core.tokens import BEARER_CHALLENGE, presented_token

logger = logging.getLogger(__name__)

MAX_DIGITS = 18

STATUS: dict[type[HubError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    TooLarge: 413,
    KeyReused: 422,
    RateLimited: 429,
    Busy: 503,
}


def _hub(request: Request) -> Hub:
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is None:
        raise Busy("the hub is starting")
    return hub


def error_response(exc: HubError) -> Response:
    """The one mapping of the hub's errors to HTTP: status, a one-line reason, and the headers some
    statuses need (a 401's challenge, a 429's or 503's ``Retry-After``: RFC 9110 10.2.3, so that a
    client whose subscribes outran the verification queue knows when to ask again)."""
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = BEARER_CHALLENGE
    elif isinstance(exc, (RateLimited, Busy)):
        headers["Retry-After"] = str(exc.retry_after)
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return PlainTextResponse(str(exc) + "\n", status_code=status, headers=headers)
    logger.error("unmapped hub error %s", type(exc).__name__)
    return PlainTextResponse("hub error\n", status_code=503)


def whole(value: str | None, name: str) -> int | None:
    """``value`` as a whole number (None if absent or empty), or :class:`BadRequest` naming ``name``."""
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_DIGITS:
        raise BadRequest(f"{name} must be a whole number")
    return int(value)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit():
        if len(declared) > MAX_DIGITS or int(declared) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
    return bytes(body)


async def _count(hub: Hub, request: Request, limit: str, names: Iterable[str] = (), cost: int = 1) -> None:
    """Count this request against the client's ``limit``: for each of ``names`` (``CLASS:KEY``), or at
    ``cost`` for the client itself (``CLASS``); :class:`RateLimited` when over."""
    budgets = hub.services.limits
    if not budgets.applies(request.scope.get("client")):
        return
    client = budgets.client(request.scope.get("client"))
    if ":" in limit:
        retry_after = await budgets.hit_names(limit, names, client)
    else:
        retry_after = await budgets.hit(limit, client, cost)
    if retry_after is not None:
        raise RateLimited(limits.reason(limit), retry_after)


def _callback_host(hub: Hub, callback: str) -> str:
    """The budget a subscription's callback counts against: its host, or its name on our own relay,
    whose callbacks all share one host."""
    name = hub.services.own_name(callback)
    if name is not None:
        return f"callback-host=relay/{name}"
    return f"callback-host={store.host_of(callback)}"


def _share_holder(hub: Hub, request: Request) -> str | None:
    """Whose share of a cap a subscription counts against; None for a client exempt from limits."""
    client = request.scope.get("client")
    if hub.services.limits.exempt(client):
        return None
    return limits.client_key(str(client[0]) if client else None)[:64]


async def _publish(hub: Hub, request: Request, ping: publish.Ping | publish.FatPing) -> Response:
    authorize_publish(
        hub.settings,
        ping,
        token=presented_token(request.headers),
        client_host=request.client.host if request.client else None,
    )
    # After authorization: a publisher refused for want of a token must not spend a topic's budget.
    topics = (ping.topic,) if isinstance(ping, publish.FatPing) else ping.urls
    # A ping costs what it makes the hub do, a fetch per topic: the request itself was counted once.
    await _count(hub, request, "publish", cost=len(topics) - 1)
    await _count(hub, request, "publish:topic", (f"topic={t}" for t in topics))
    key = idempotency_key(request.headers.get("idempotency-key"))
    if not isinstance(ping, publish.FatPing):
        # A ping names topics to fetch: the hub diffs what it fetches, so a repeated ping
        # distributes nothing twice and needs no key. What it delivers is known only after the fetch.
        await hub.publish(ping)
        return Response(status_code=PUBLISHED)
    queued = await (hub.publish(ping) if key is None else hub.publish_once(ping, key))
    if queued is None:
        return Response(status_code=PUBLISHED, headers={"Idempotent-Replayed": "true"})
    # The publisher learns at once that a topic has nobody to deliver to (a typo'd topic, a
    # subscriber that is gone) instead of a 204 that looks like success.
    return Response(status_code=PUBLISHED, headers={publish.DELIVERIES_HEADER: str(queued)})


def idempotency_key(value: str | None) -> str | None:
    """The ``Idempotency-Key`` header's key, or None without one. The draft makes it a Structured
    Field String (``"..."``); the bare token Stripe's clients send is taken too."""
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if not key or len(key) > idempotency.MAX_KEY_LENGTH or not key.isprintable() or not key.isascii():
        raise BadRequest(f"Idempotency-Key must be 1 to {idempotency.MAX_KEY_LENGTH} printable ASCII characters")
    return key


async def hub_endpoint(request: Request) -> Response:
    try:
        hub = _hub(request)
        # Whatever its Content-Type, the body is read as a form (subscribers and publishers in the
        # wild send forms without one).
        form = publish.form_of(await read_body(request, hub.settings.max_form_size))
        if form.get("hub.mode") == "publish":
            # The client's publish budget is counted here, since only the body says this publishes.
            await _count(hub, request, "publish")
            return await _publish(hub, request, publish.Ping(publish.ping_urls(form)))
        await _count(hub, request, "subscribe")
        req = subscriptions.parse(form)
        await _count(hub, request, "subscribe:callback-host", [_callback_host(hub, req.callback)])
        hub.request(replace(req, client=_share_holder(hub, request)))
        return PlainTextResponse("Accepted: verification follows\n", status_code=202)
    except HubError as exc:
        return error_response(exc)


async def publish_endpoint(request: Request) -> Response:
    try:
        hub = _hub(request)
        body = await read_body(request, hub.settings.max_topic_size)
        ping = publish.parse(request.headers.get("content-type"), request.query_params.get("hub.topic"), body)
        return await _publish(hub, request, ping)
    except HubError as exc:
        return error_response(exc)


async def sup_endpoint(request: Request) -> Response:
    try:
        seconds = whole(request.query_params.get("seconds"), "seconds")
        doc = await _hub(request).sup_document(seconds)
        return Response(doc, media_type="application/json")
    except HubError as exc:
        return error_response(exc)


def _proof(params: Any) -> tuple[str, str, int, str]:
    callback = subscriptions.check_callback(params.get("hub.callback"))
    topic = subscriptions.check_url(params.get("hub.topic"), "hub.topic")
    timestamp = whole(params.get("hub.timestamp"), "hub.timestamp")
    proof = params.get("hub.signature", "")
    if timestamp is None or not proof:
        raise BadRequest("hub.timestamp and hub.signature are required (see docs/hub.md, status and replay)")
    return callback, topic, timestamp, proof


async def status_endpoint(request: Request) -> Response:
    try:
        status = await _hub(request).status(*_proof(request.query_params))
    except HubError as exc:
        return error_response(exc)
    sub = status.subscription
    return JSONResponse(
        {
            "topic": sub.topic,
            "callback": sub.callback,
            "state": sub.state,
            "lease_seconds": sub.lease_seconds,
            "verified_at": sub.verified_at,
            "expires_at": sub.expires_at,
            "last_seq": sub.seq,
            "pending": status.pending,
            "failed": sub.failed,
            "last_failure": sub.last_failure,
            "last_failure_at": sub.last_failure_at,
            "oldest_retained_seq": status.oldest_retained_seq,
        },
        headers={"Cache-Control": "no-store"},
    )


async def replay_endpoint(request: Request) -> Response:
    try:
        hub = _hub(request)
        # A replay sends deliveries again: outbound work, so it has budgets, per client before
        # anything is read and per subscription once it is named.
        await _count(hub, request, "replay")
        form = publish.form_of(await read_body(request, hub.settings.max_form_size))
        params = {**dict(request.query_params), **{k: v for k, v in form.items() if isinstance(v, str)}}
        since = whole(params.get("hub.since"), "hub.since")
        if since is None:
            raise BadRequest("hub.since must be a sequence number")
        callback, topic, timestamp, proof = _proof(params)
        await _count(hub, request, "replay:subscription", [f"subscription={callback} {topic}"])
        queued = await hub.replay(callback, topic, timestamp, proof, since=since)
    except HubError as exc:
        return error_response(exc)
    return JSONResponse({"queued": queued}, status_code=202)
