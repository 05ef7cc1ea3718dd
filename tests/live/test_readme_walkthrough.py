"""The README's curl walk-through, run as written against a real `reversehub serve` (only the port changes)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, unavailable

ROOT = Path(__file__).resolve().parents[2]


def block(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- walkthrough:{name} -->\n```sh\n(.*?)```", text, re.S)
    assert match, f"README has no walkthrough:{name} block"
    return match.group(1)


@pytest.fixture
def server(tmp_path):
    if shutil.which("curl") is None:
        unavailable("curl not installed")
    port = free_port()
    exe = Path(sys.executable).with_name("reversehub")
    proc = subprocess.Popen(
        [str(exe), "serve", "--port", str(port), "--database-url", f"sqlite:///{tmp_path / 'w.db'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(base + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield port
    proc.terminate()
    proc.wait(timeout=15)


def sh(script: str, port: int, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env, stdout=subprocess.PIPE, text=True
    )


def wait_until(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_curl_walkthrough(server, tmp_path):
    claim = block("claim")
    # Terminal 1 claims and polls; its poll stays open until the request of terminal 2 arrives.
    poller = sh(claim, server, tmp_path)
    wait_until(lambda: (tmp_path / "claim.txt").exists() and 'rel="first"' in (tmp_path / "claim.txt").read_text())
    claim_text = (tmp_path / "claim.txt").read_text()
    assert claim_text.startswith("HTTP/1.1 201")
    req_url = re.search(r'link: <(.*?)>; rel="first"', claim_text, re.I).group(1)
    assert f'<http://127.0.0.1:{server}/relay/demo/>; rel="related"' in claim_text

    # Terminal 2 calls the public URL; held poll or not yet, the request waits up to
    # --unavailable-timeout for a poller, so the order of the two terminals does not matter.
    requester = sh(block("request"), server, tmp_path)
    polled, _ = poller.communicate(timeout=20)
    assert poller.returncode == 0
    assert "content-type: message/http" in polled.lower()
    assert "GET /relay/demo/hello?x=1 HTTP/1.1" in polled
    assert "requesting-client: 127.0.0.1:" in polled.lower()
    assert 'rel="next"' in polled

    # Terminal 1 replies to the request URL it polled.
    replied = sh(block("reply"), server, tmp_path, env={**os.environ, "REQ": req_url})
    out, _ = replied.communicate(timeout=20)
    assert out.startswith("HTTP/1.1 202")
    answer, _ = requester.communicate(timeout=20)
    assert answer.startswith("HTTP/1.1 200")
    assert answer.rstrip().endswith("hello from behind the firewall")


def test_curl_publish_reaches_a_subscriber(server, tmp_path):
    from clients import Subscriber

    topic = "http://127.0.0.1:8000/topics/news".replace("8000", str(server))
    got: list[tuple[str, str]] = []
    arrived = threading.Event()

    def on_update(update):
        got.append((update.content_type, update.text))
        arrived.set()

    with Subscriber(topic, on_update, hub=f"http://127.0.0.1:{server}/hub"):
        out, _ = sh(block("publish"), server, tmp_path).communicate(timeout=20)
        assert out.startswith("HTTP/1.1 204")
        assert arrived.wait(20)
    assert got == [("text/plain", "hello from curl")]
