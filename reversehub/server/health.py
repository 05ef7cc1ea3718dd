"""``GET /healthz`` and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route


async def healthz(request: Request) -> Response:
    if getattr(request.app.state, "services", None) is None:
        return PlainTextResponse("starting\n", status_code=503)
    return PlainTextResponse("ok\n")


async def metrics(request: Request) -> Response:
    services = getattr(request.app.state, "services", None)
    if services is None:
        return PlainTextResponse("starting\n", status_code=503)
    return Response(generate_latest(services.metrics), media_type=CONTENT_TYPE_LATEST)


def routes() -> list[BaseRoute]:
    return [Route("/healthz", healthz, methods=["GET", "HEAD"]), Route("/metrics", metrics, methods=["GET"])]
