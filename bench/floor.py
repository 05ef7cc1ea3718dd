#!/usr/bin/env python3
"""The floor of reversehub's stack, for bench/memory.py: the least a server built on it holds.

    .venv/bin/python bench/floor.py PORT                      # uvicorn + Starlette, one route
    .venv/bin/python bench/floor.py PORT sqlite:///floor.db   # and an async SQLAlchemy engine

A one-route Starlette app (``GET /healthz``) under uvicorn with the implementations ``reversehub
serve`` runs (uvloop, httptools, no websocket protocol, no access log). With a database URL its
lifespan also opens an async SQLAlchemy engine on aiosqlite and runs one query, as any service
on SQLAlchemy 2's asyncio layer must. This file imports nothing else, so that what bench/memory.py
measures here is the stack's own memory.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


def app_for(database_url: str | None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if database_url is None:
            yield
            return
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine(database_url)
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        try:
            yield
        finally:
            await engine.dispose()

    return Starlette(routes=[Route("/healthz", healthz)], lifespan=lifespan)


def main() -> None:
    port = int(sys.argv[1])
    database_url = sys.argv[2].replace("sqlite:", "sqlite+aiosqlite:", 1) if len(sys.argv) > 2 else None
    uvicorn.run(
        app_for(database_url),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
