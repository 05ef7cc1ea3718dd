"""The deployment recipe's files (deploy/) say only what reversehub, Caddy and systemd understand:
every REVERSEHUB_* variable is one of ``serve``'s, every Caddy variable one the Caddyfile reads, and
the systemd unit passes ``systemd-analyze verify`` without a warning (required in CI, like every tool a test needs).
tests/live/test_caddy.py runs the Caddyfile itself."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from reversehub.server.cli import serve
from tests.support import unavailable

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def serve_variables() -> set[str]:
    return {name for param in serve.params for name in ([param.envvar] if isinstance(param.envvar, str) else [])}


def assignments(text: str) -> dict[str, str]:
    """KEY=VALUE lines, commented-out examples included."""
    return dict(re.findall(r"^#?([A-Z][A-Z0-9_]+)=(.*)$", text, re.MULTILINE))


def test_the_env_file_and_the_unit_set_only_serve_variables():
    known = serve_variables()
    assert "REVERSEHUB_SSL_CERTFILE" in known and "REVERSEHUB_PUBLIC_URL" in known
    env = assignments((DEPLOY / "reversehub.env").read_text())
    unit = (DEPLOY / "reversehub.service").read_text()
    env |= dict(re.findall(r"(REVERSEHUB_[A-Z0-9_]+)=(\S+)", unit))
    assert {"REVERSEHUB_PUBLIC_URL", "REVERSEHUB_RELAY_DOMAIN", "REVERSEHUB_HOST", "REVERSEHUB_DATABASE_URL"} <= set(
        env
    )
    assert set(env) <= known, set(env) - known
    assert env["REVERSEHUB_HOST"] == "127.0.0.1"  # behind Caddy, never reachable around it


def test_caddy_variables_are_the_ones_the_caddyfile_reads():
    used = set(re.findall(r"\{\$([A-Z_]+)(?::[^}]*)?\}", (DEPLOY / "Caddyfile").read_text()))
    assert {"DOMAIN", "RELAY_DOMAIN", "UPSTREAM", "HTTP_PORT", "HTTPS_PORT", "CADDY_ADMIN"} <= used
    assert set(assignments((DEPLOY / "caddy.env").read_text())) <= used
    assert "EnvironmentFile=/etc/caddy/reversehub.env" in (DEPLOY / "caddy-reversehub.conf").read_text()


def test_the_systemd_unit_verifies(tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze not installed")
    reversehub = Path(sys.executable).with_name("reversehub")
    unit = (DEPLOY / "reversehub.service").read_text().replace("/opt/reversehub/bin/reversehub", str(reversehub))
    (tmp_path / "reversehub.service").write_text(unit)
    out = subprocess.run([analyze, "verify", str(tmp_path / "reversehub.service")], capture_output=True, text=True)
    assert out.returncode == 0 and "reversehub.service" not in out.stderr + out.stdout, out.stderr
