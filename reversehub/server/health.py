"""``GET /healthz`` (liveness), ``GET /readyz`` (readiness) and ``GET /metrics`` (Prometheus text).

- ``/healthz`` answers 200 once the process serves, whatever its database and broker do: a
  supervisor that restarts on it must not restart every server because their shared database is
  down. Its text says when either does not answer, or a request failed for want of either moments
  ago (``ok; degraded: ...``).
  It answers 503 only while starting, or when the process's background work is gone and it is on
  its way out (:func:`reversehub.core.supervise.essential`).
- ``/readyz`` answers 200 only while the database answers a query of its schema (on PostgreSQL:
  and is not read-only), the broker answers a round trip, and no request failed for want of either
  in the last :data:`READY_HOLD` seconds (:func:`storage_failed`); 503 with the reason otherwise.
  The last clause is there because a full disk lets every read through: only a write tells.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from reversehub.core.services import Services

logger = logging.getLogger(__name__)

READY_TIMEOUT = 2.0  # seconds each probe of /readyz may take
HEALTH_TIMEOUT = 1.0  # seconds each probe of /healthz may take (it only changes its text)
READY_HOLD = 10.0  # seconds /readyz stays 503 after a request failed for want of the database or broker
_NO_STORE = {"Cache-Control": "no-store"}


def storage_failed(state: Any, reason: str | None = None) -> None:
    """Note on the app's state that the database or the broker just failed a request (``/readyz``,
    and ``/healthz``'s text)."""
    state.storage_failed_at = time.monotonic()
    state.storage_failed_reason = reason or "the database or the broker failed a request"


def degraded(state: Any) -> str | None:
    """Why requests failed moments ago (within :data:`READY_HOLD`), or None."""
    failed_at: float | None = getattr(state, "storage_failed_at", None)
    if failed_at is None or time.monotonic() - failed_at >= READY_HOLD:
        return None
    return str(getattr(state, "storage_failed_reason", None) or "the database or the broker failed a request")


async def healthz(request: Request) -> Response:
    failed = getattr(request.app, "failed", None)
    if failed is not None:  # the process is on its way out (reversehub.core.supervise.essential)
        return PlainTextResponse(f"failing: {failed}\n", status_code=503)
    if getattr(request.app.state, "services", None) is None:
        return PlainTextResponse("starting\n", status_code=503)
    reason = degraded(request.app.state)
    if reason is not None:
        reason += " moments ago"
    else:
        reason = await _unavailable(request.app.state.services, HEALTH_TIMEOUT)
    if reason is not None:
        # Still 200: the process is fine and restarting it would not bring the database back.
        # The text tells an operator (and /readyz a load balancer) what it waits for.
        return PlainTextResponse(f"ok; degraded: {reason} (see /readyz)\n", headers=_NO_STORE)
    return PlainTextResponse("ok\n", headers=_NO_STORE)


async def _database(services: Services) -> str | None:
    async with services.engine.connect() as conn:
        await conn.execute(text("SELECT version_num FROM alembic_version"))
        if conn.dialect.name == "postgresql":
            if (await conn.execute(text("SHOW transaction_read_only"))).scalar() == "on":
                return "database is read-only"
    return None


async def _broker(services: Services) -> str | None:
    await services.broker.get("readyz")
    return None


async def readyz(request: Request) -> Response:
    services: Services | None = getattr(request.app.state, "services", None)
    if services is None:
        return _not_ready("starting")
    reason = degraded(request.app.state)
    if reason is not None:
        return _not_ready(f"{reason}: a request failed for want of it moments ago")
    reason = await _unavailable(services, READY_TIMEOUT)
    if reason is not None:
        return _not_ready(reason)
    return PlainTextResponse("ready\n", headers=_NO_STORE)


async def _unavailable(services: Services, timeout: float) -> str | None:
    """Why the database or the broker cannot serve now (each probe within ``timeout``), or None."""
    for name, probe in (("database", _database), ("broker", _broker)):
        try:
            with anyio.fail_after(timeout):
                reason = await probe(services)
        except Exception as exc:
            # Its type only: a driver's message may quote a statement's parameters.
            logger.warning("health: %s not answering (%s)", name, type(exc).__name__)
            reason = f"{name} not answering"
        if reason is not None:
            return reason
    return None


def _not_ready(reason: str) -> Response:
    return PlainTextResponse(
        f"not ready: {reason}\n", status_code=503, headers={"Retry-After": "5", "Cache-Control": "no-store"}
    )


async def metrics(request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return PlainTextResponse("starting\n", status_code=503)
    return Response(generate_latest(services.metrics), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
