"""The hub's routes (DESIGN.md URL layout: ``/hub``, ``/publish``, ``/sup``, ``/hub/...``)."""

from __future__ import annotations

from starlette.routing import BaseRoute, Route

from hub import endpoints


def routes() -> list[BaseRoute]:
    return [
        Route("/hub", endpoints.hub_endpoint, methods=["POST"]),
        Route("/publish", endpoints.publish_endpoint, methods=["POST"]),
        Route("/sup", endpoints.sup_endpoint, methods=["GET"]),
        Route("/hub/status", endpoints.status_endpoint, methods=["GET"]),
        Route("/hub/replay", endpoints.replay_endpoint, methods=["POST"]),
    ]
