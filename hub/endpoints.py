"""HTTP endpoints: parse, authorize, call :class:`hub.service.Hub`, map the result. Errors map here only.

- ``POST /hub``: ``hub.mode=subscribe|unsubscribe`` -> 202 (verification follows), ``publish`` -> 204.
- ``POST /publish``: a ping or a fat ping (:mod:`hub.publish`) -> 204 once recorded durably.
- ``GET /sup``: our SUP document. ``GET /hub/status`` and ``POST /hub/replay``: a subscription's
  state and a replay of its retained deliveries, for the owner of its secret (:mod:`hub.signing`).

Each request is parsed once, here; who may publish is decided on that parse (:mod:`hub.authz`), and
the budgets per topic and per callback host (``--rate-limit``) are counted on it too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from hub import publish, subscriptions
from hub.authz import authorize_publish
from hub.errors import (
    BadRequest,
    Busy,
    Forbidden,
    HubError,
    NotFound,
    RateLimited,
    TooLarge,
    Unauthorized,
)
from hub.service import Hub
from reversehub.core import limits
from reversehub.core.tokens import BEARER_CHALLENGE, presented_token

logger = logging.getLogger(__name__)

STATUS: dict[type[HubError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    TooLarge: 413,
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
    statuses need (a 401's challenge, a 429's ``Retry-After``)."""
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = BEARER_CHALLENGE
    elif isinstance(exc, RateLimited):
        headers["Retry-After"] = str(exc.retry_after)
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return PlainTextResponse(str(exc) + "\n", status_code=status, headers=headers)
    logger.error("unmapped hub error %s", type(exc).__name__)
    return PlainTextResponse("hub error\n", status_code=503)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"body larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"body larger than {limit} bytes")
    return bytes(body)


async def _count(hub: Hub, request: Request, limit: str, names: Iterable[str]) -> None:
    """Count this request against ``limit`` for each of ``names``; :class:`RateLimited` when over."""
    budgets = hub.services.limits
    if not budgets.applies(request.scope.get("client")):
        return
    retry_after = await budgets.hit_names(limit, names)
    if retry_after is not None:
        raise RateLimited(limits.reason(limit), retry_after)


def _client(request: Request) -> str:
    return f"client={request.client.host if request.client else '-'}"


async def _publish(hub: Hub, request: Request, ping: publish.Ping | publish.FatPing) -> Response:
    authorize_publish(
        hub.settings,
        ping,
        token=presented_token(request.headers),
        client_host=request.client.host if request.client else None,
    )
    # After authorization: a publisher refused for want of a token must not spend a topic's budget.
    topics = (ping.topic,) if isinstance(ping, publish.FatPing) else ping.urls
    await _count(hub, request, "publish:topic", (f"topic={t}" for t in topics))
    await hub.publish(ping)
    return Response(status_code=204)


async def hub_endpoint(request: Request) -> Response:
    try:
        hub = _hub(request)
        # Whatever its Content-Type, the body is read as a form (subscribers and publishers in the
        # wild send forms without one).
        form = publish.form_of(await read_body(request, hub.settings.max_form_size))
        if form.get("hub.mode") == "publish":
            # The client's publish budget is counted here, since only the body says this publishes.
            await _count(hub, request, "publish", [_client(request)])
            return await _publish(hub, request, publish.Ping(publish.ping_urls(form)))
        await _count(hub, request, "subscribe", [_client(request)])
        req = subscriptions.parse(form)
        host = (urlsplit(req.callback).hostname or "").lower()
        await _count(hub, request, "subscribe:callback-host", [f"callback-host={host}"])
        hub.request(req)
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
        seconds = request.query_params.get("seconds")
        doc = await _hub(request).sup_document(int(seconds) if seconds and seconds.isdigit() else None)
        return Response(doc, media_type="application/json")
    except HubError as exc:
        return error_response(exc)


def _proof(params: Any) -> tuple[str, str, int, str]:
    callback = subscriptions.check_callback(params.get("hub.callback"))
    topic = subscriptions.check_url(params.get("hub.topic"), "hub.topic")
    timestamp = params.get("hub.timestamp", "")
    proof = params.get("hub.signature", "")
    if not timestamp.isdigit() or not proof:
        raise BadRequest("hub.timestamp and hub.signature are required (see README: subscription status)")
    return callback, topic, int(timestamp), proof


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
        form = publish.form_of(await read_body(request, hub.settings.max_form_size))
        params = {**dict(request.query_params), **{k: v for k, v in form.items() if isinstance(v, str)}}
        since = params.get("hub.since", "")
        if not since.isdigit():
            raise BadRequest("hub.since must be a sequence number")
        queued = await hub.replay(*_proof(params), since=int(since))
    except HubError as exc:
        return error_response(exc)
    return JSONResponse({"queued": queued}, status_code=202)
