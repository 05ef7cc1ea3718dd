"""The CLI's expected failures (issue 16, item 5): each is one line on stderr, no traceback, and a
non-zero exit; ``publish`` says when nobody subscribes; ``expose --to`` takes a bare port."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.live.test_clients_live import Process, Server, run_cli, server  # noqa: F401  (fixture)
from tests.support import free_port, serve_live

pytestmark = [pytest.mark.anyio, pytest.mark.live]


@pytest.fixture
def down() -> str:
    """The origin of a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def hint(origin: str) -> str:
    return f"is `reversehub serve` running at {origin}?"


async def fails_with(line: str, *args: str) -> None:
    """``reversehub ARGS`` exits 1 with exactly ``Error: LINE`` (after the ``[state]`` lines that
    subscribe and expose print as they go)."""
    code, out, err = await run_cli(*args)
    said = [text for text in err.splitlines() if not re.fullmatch(r"\[[a-z ]+\]", text)]
    assert (code, out, said) == (1, "", [f"Error: {line}"])


async def test_publish_with_the_server_down(down: str) -> None:
    await fails_with(
        f"cannot reach {down}/publish (connection refused): {hint(down)}",
        *("publish", "http://example.com/t", "--data", "hi", "--hub", f"{down}/hub"),
    )


async def test_publish_data_from_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    await fails_with(
        f"--data @{missing}: cannot read {missing}: No such file or directory",
        *("publish", "http://example.com/t", "--data", f"@{missing}"),
    )


async def test_ping_with_the_server_down(down: str) -> None:
    await fails_with(
        f"cannot reach {down}/hub (connection refused): {hint(down)}",
        *("ping", "http://example.com/feed", "--hub", f"{down}/hub"),
    )


async def test_ping_whose_feed_is_down(down: str) -> None:
    await fails_with(
        f"could not fetch {down}/feed to find its hub (connection refused); pass --hub URL", "ping", f"{down}/feed"
    )


async def test_subscribe_with_the_server_down(down: str) -> None:
    await fails_with(
        f"cannot reach {down}/reversehttp (connection refused): {hint(down)}",
        *("subscribe", "http://example.com/t", "--hub", f"{down}/hub"),
    )


async def test_subscribe_with_the_hub_down(server: Server, down: str) -> None:  # noqa: F811
    await fails_with(
        f"cannot reach {down}/hub (connection refused): {hint(down)}",
        *("subscribe", "http://example.com/t", "--hub", f"{down}/hub", "--relay", f"{server.url}/reversehttp"),
    )


async def test_expose_with_the_relay_down(down: str) -> None:
    async with serve_live(_hello()) as local:
        await fails_with(
            f"cannot reach {down}/reversehttp (connection refused): {hint(down)}",
            *("expose", "app", "--to", local, "--relay", f"{down}/reversehttp"),
        )


async def test_expose_to_a_port_nothing_listens_on(server: Server) -> None:  # noqa: F811
    port = free_port()
    await fails_with(
        f"nothing answers at http://127.0.0.1:{port} (connection refused): start the local server first, or fix --to",
        *("expose", "app", "--to", str(port), "--relay", f"{server.url}/reversehttp"),
    )


async def test_expose_to_what_is_no_address() -> None:
    await fails_with(
        "--to 'localhost:http' is not a port, HOST:PORT or http(s):// URL (e.g. 3000, localhost:3000)",
        *("expose", "app", "--to", "localhost:http"),
    )


def _hello():  # type: ignore[no-untyped-def]
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    return Starlette(routes=[Route("/", lambda request: PlainTextResponse("local"))])


async def test_publish_says_when_nobody_subscribes(server: Server) -> None:  # noqa: F811
    topic = server.topic("typo")
    code, out, err = await run_cli("publish", topic, "--data", "hi", "--hub", server.hub)
    assert (code, out, err) == (0, "", f"published 2 bytes to {topic}, but nobody subscribes to it: 0 deliveries\n")
    sub = await Process.start("subscribe", topic, "--hub", server.hub)
    try:
        await sub.until(lambda line: line == "[subscribed]", stream="stderr")
        code, out, err = await run_cli("publish", topic, "--data", "hi", "--hub", server.hub)
        assert (code, err) == (0, f"published 2 bytes to {topic}: queued for 1 subscription\n")
        code, out, err = await run_cli("ping", topic, "--hub", server.hub)
        assert (code, err) == (0, f"pinged the hub about {topic}: queued for fetch\n")
        assert await sub.interrupt() == 0
    finally:
        sub.kill()


PG_DOWN = "postgresql://postgres:sekrit@127.0.0.1:{port}/reversehub"


async def test_db_upgrade_with_postgresql_down() -> None:
    port = free_port()
    await fails_with(
        f"cannot use the database at postgresql://postgres:***@127.0.0.1:{port}/reversehub (connection refused): "
        "is PostgreSQL running there, and is --database-url right?",
        *("db", "upgrade", "--database-url", PG_DOWN.format(port=port)),
    )


async def test_serve_with_postgresql_down() -> None:
    port = free_port()
    await fails_with(
        f"cannot use the database at postgresql://postgres:***@127.0.0.1:{port}/reversehub (connection refused): "
        "is PostgreSQL running there, and is --database-url right?",
        *("serve", "--port", str(free_port()), "--database-url", PG_DOWN.format(port=port)),
    )


async def test_serve_with_an_unsupported_database() -> None:
    await fails_with(
        "unsupported database 'mysql': use sqlite:/// or postgresql://",
        *("serve", "--port", str(free_port()), "--database-url", "mysql://x/y"),
    )
