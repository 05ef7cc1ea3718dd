"""A serving process leaves out what it never runs: the Python client library stays unimported."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from reversehub.server.cli import main

SERVING = """
import sys
from reversehub.core.settings import Settings
from reversehub.server import cli, serve
from reversehub.server.app import create_app

create_app(Settings(database_url="sqlite:///:memory:"))
loaded = sorted(m for m in sys.modules if m == "clients" or m.startswith("clients."))
print(",".join(loaded))
"""


def test_the_serving_process_does_not_import_the_client_library() -> None:
    out = subprocess.run([sys.executable, "-c", SERVING], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""


def test_the_client_commands_are_still_listed_and_run() -> None:
    runner = CliRunner()
    listed = runner.invoke(main, ["--help"])
    assert listed.exit_code == 0
    for name in ("serve", "db", "subscribe", "publish", "ping", "expose"):
        assert f"  {name} " in listed.output
    helped = runner.invoke(main, ["expose", "--help"])
    assert helped.exit_code == 0 and "--mailbox" in helped.output
    unknown = runner.invoke(main, ["no-such-command"])
    assert unknown.exit_code == 2 and "No such command" in unknown.output


@pytest.mark.anyio
async def test_the_demo_and_the_js_library_are_served(client):
    js = await client.get("/js/reversehub.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert js.content.startswith(b"// reversehub.js")
    demo = await client.get("/demo")
    assert demo.status_code == 200 and demo.headers["content-type"].startswith("text/html")
