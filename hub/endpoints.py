"""HTTP endpoints: parse, call :class:`hub.service.Hub`, map the result. Errors map here only.

- ``POST /hub``: ``hub.mode=subscribe|unsubscribe`` -> 202 (verification follows), ``publish`` -> 204.
- ``POST /publish``: a ping or a fat ping (:mod:`hub.publish`) -> 204 once recorded durably.
- ``GET /sup``: our SUP document. ``GET /hub/status`` and ``POST /hub/replay``: a subscription's
  state and a replay of its retained deliveries, for the owner of its secret (:mod:`hub.signing`).
"""

from __future__ import annotations

import logging
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response

from hub import publish, subscriptions
from hub.errors import BadRequest, Busy, HubError, NotFound, NotOwner, TooLarge
from hub.service import Hub

logger = logging.getLogger(__name__)

MAX_FORM = 64 * 1024
STATUS = {BadRequest: 400, NotOwner: 403, NotFound: 404, TooLarge: 413, Busy: 503}


def _hub(request: Request) -> Hub:
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is None:
        raise Busy("the hub is starting")
    return hub


def error_response(exc: HubError) -> Response:
    for kind, status in STATUS.items():
        if isinstance(exc, kind):
            return PlainTextResponse(str(exc) + "\n", status_code=status)
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


async def hub_endpoint(request: Request) -> Response:
    try:
        hub = _hub(request)
        body = await read_body(request, MAX_FORM)
        form = publish.form_of(body) if publish.is_form(request.headers.get("content-type")) or body else FormData()
        if form.get("hub.mode") == "publish":
            await hub.publish(publish.Ping(publish.ping_urls(form)))
            return Response(status_code=204)
        hub.request(subscriptions.parse(form))
        return PlainTextResponse("Accepted: verification follows\n", status_code=202)
    except HubError as exc:
        return error_response(exc)


async def publish_endpoint(request: Request) -> Response:
    try:
        hub = _hub(request)
        body = await read_body(request, hub.settings.max_topic_size)
        ping = publish.parse(request.headers.get("content-type"), request.query_params.get("hub.topic"), body)
        await hub.publish(ping)
        return Response(status_code=204)
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
    callback = subscriptions.check_url(params.get("hub.callback"), "hub.callback")
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
        form = publish.form_of(await read_body(request, MAX_FORM))
        params = {**dict(request.query_params), **{k: v for k, v in form.items() if isinstance(v, str)}}
        since = params.get("hub.since", "")
        if not since.isdigit():
            raise BadRequest("hub.since must be a sequence number")
        queued = await _hub(request).replay(*_proof(params), since=int(since))
    except HubError as exc:
        return error_response(exc)
    return JSONResponse({"queued": queued}, status_code=202)
