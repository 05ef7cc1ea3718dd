"""Fixtures of the chaos tests: our own PostgreSQL and Redis, ``reversehub serve`` processes, a receiver.

Every process a test starts is ended in the fixture's ``finally`` and every temporary directory is
removed, whatever the test did to them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests import pgdb
from tests.chaos.figures import Receiver
from tests.chaos.processes import Postgres, Redis, Serve, scratch_dir
from tests.support import free_port, serve_live


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The test's temporary directory (logs of every process, PostgreSQL's data, SQLite files);
    kept for a post-mortem when REVERSEHUB_CHAOS_KEEP is set, else removed."""
    path = scratch_dir()
    try:
        yield path
    finally:
        if os.environ.get("REVERSEHUB_CHAOS_KEEP"):
            print(f"\n[chaos] kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def postgres(scratch: Path) -> Iterator[Postgres]:
    server = Postgres(scratch / "pg")
    server.start()
    try:
        yield server
    finally:
        if server.running():
            with contextlib.suppress(subprocess.CalledProcessError):  # it stopped meanwhile
                server.stop()


@pytest.fixture
async def database(postgres: Postgres) -> str:
    """A migrated database on our own cluster (serve would migrate too, but three at once may race)."""
    return await pgdb.create_database(postgres.url, migrate=True)


@pytest.fixture
def redis(scratch: Path) -> Iterator[Redis]:
    server = Redis(scratch)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def launch(scratch: Path) -> Iterator[Callable[..., Serve]]:
    """``launch(*flags)`` starts ``reversehub serve`` on a free port with its own public URL."""
    procs: list[Serve] = []

    def start(*flags: str) -> Serve:
        n = len(procs)
        proc = Serve(["--log-level", "warning", "--allow-private-networks", *flags], free_port(), scratch / f"s{n}.log")
        proc.start()
        procs.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in procs:
            proc.kill()


@pytest.fixture
async def cluster(database: str, redis: Redis, launch: Callable[..., Serve], client: httpx.AsyncClient) -> list[Serve]:
    """Three ``reversehub serve`` processes on our PostgreSQL and Redis, each its own port and public URL.

    ``launch`` comes after the services it uses, so that its processes end before those do."""
    procs = [launch("--database-url", database, "--redis-url", redis.url) for _ in range(3)]
    for proc in procs:
        await proc.ready(client)
    return procs


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    r = Receiver()
    async with serve_live(r.app, limit_concurrency=2000) as base:
        yield r, base


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        yield c
