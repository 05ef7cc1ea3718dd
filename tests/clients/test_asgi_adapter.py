"""The endpoint's ASGI adapter on its own: scope built from a relayed request, responses, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from clients._asgi import Lifespan, call_app
from relay.wire import HttpRequest

pytestmark = pytest.mark.anyio

PUBLIC = "https://relay.test/relay/app/"


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "path": request.url.path,
            "root_path": request.scope["root_path"],
            "query": request.url.query,
            "client": list(request.client) if request.client else None,
            "scheme": request.url.scheme,
            "body": (await request.body()).decode(),
            "header": request.headers.get("x-h"),
            "url_for": str(request.url_for("echo", rest="z")),
        }
    )


async def stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"a"
        yield b"b"

    return StreamingResponse(chunks(), media_type="text/plain")


async def boom(request: Request) -> JSONResponse:
    raise RuntimeError("boom")


APP = Starlette(
    routes=[
        Route("/echo/{rest:path}", echo, methods=["GET", "POST"], name="echo"),
        Route("/stream", stream),
        Route("/boom", boom),
    ]
)


async def test_scope_mirrors_a_reverse_proxy_mount() -> None:
    request = HttpRequest("POST", "/relay/app/echo/x%20y?q=1", [("Host", "relay.test"), ("X-H", "v")], b"data")
    response = await call_app(APP, request, PUBLIC, "198.51.100.4:5555")
    assert response.status == 200
    import json

    data = json.loads(response.body)
    assert data == {
        "path": "/relay/app/echo/x y",
        "root_path": "/relay/app",
        "query": "q=1",
        "client": ["198.51.100.4", 5555],
        "scheme": "https",
        "body": "data",
        "header": "v",
        "url_for": "https://relay.test/relay/app/echo/z",
    }


async def test_streaming_and_failing_apps() -> None:
    streamed = await call_app(APP, HttpRequest("GET", "/relay/app/stream", [("Host", "relay.test")]), PUBLIC, None)
    assert (streamed.status, streamed.body) == (200, b"ab")
    failed = await call_app(APP, HttpRequest("GET", "/relay/app/boom", [("Host", "relay.test")]), PUBLIC, None)
    assert failed.status == 500


async def test_lifespan_runs_and_apps_without_it_are_fine() -> None:
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("up")
        yield
        events.append("down")

    lifespan_runner = Lifespan(Starlette(lifespan=lifespan))
    await lifespan_runner.startup()
    assert events == ["up"]
    await lifespan_runner.shutdown()
    assert events == ["up", "down"]

    async def plain(scope, receive, send):  # type: ignore[no-untyped-def]
        assert scope["type"] == "http", "no lifespan support"

    bare = Lifespan(plain)
    await bare.startup()
    await bare.shutdown()
