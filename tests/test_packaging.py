"""Packaging a user can trust (issue 16, item 6): the wheel's metadata, the license, pinned versions,
the ``scale`` extra and the error that names it, and ``make run`` beside ``make test`` on a fresh clone."""

from __future__ import annotations

import email
import os
import signal
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from packaging.markers import default_environment
from packaging.requirements import Requirement

from reversehub.core import extras
from tests.support import free_port

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCALE = "pip install 'reversehub[scale]'"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (path,) = out.glob("reversehub-*.whl")
    return zipfile.ZipFile(path)


def metadata(wheel: zipfile.ZipFile) -> email.message.Message:
    (name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    return email.message_from_bytes(wheel.read(name))


def test_wheel_metadata(wheel: zipfile.ZipFile) -> None:
    meta = metadata(wheel)
    assert meta["License-Expression"] == "MIT"
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in wheel.namelist())
    assert any(c.startswith("Programming Language :: Python :: 3.11") for c in meta.get_all("Classifier", []))
    # A SQLite user installs neither database driver nor Redis client, nor uvicorn's unused extras.
    base = [Requirement(r) for r in meta.get_all("Requires-Dist", []) if "extra ==" not in r]
    names = {r.name.lower() for r in base}
    assert not names & {"asyncpg", "redis", "websockets", "watchfiles", "pyyaml", "python-dotenv"}
    assert all(not r.extras for r in base if r.name == "uvicorn")
    scale = {Requirement(r).name for r in meta.get_all("Requires-Dist", []) if "extra == 'scale'" in r}
    assert scale == {"asyncpg", "redis"}
    # The migrations ship inside the wheel, so an installed `reversehub serve` migrates.
    assert any(n.startswith("migrations/versions/") for n in wheel.namelist())


def test_the_long_description_has_no_link_into_the_repository(wheel: zipfile.ZipFile) -> None:
    """PyPI shows README.md without the repository around it: relative images and links would break."""
    meta = metadata(wheel)
    assert meta["Description-Content-Type"] == "text/markdown"
    description = meta.get_payload()
    assert isinstance(description, str) and "reversehub" in description
    import re

    relative = re.findall(r"\]\((?!https?://|mailto:|#)[^)]*\)", description)
    assert relative == []


def test_license_file() -> None:
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "WITHOUT WARRANTY OF ANY KIND" in text
    assert PYPROJECT["project"]["license"] == "MIT"


def test_constraints_pin_every_dependency() -> None:
    """What make installs is what the suite ran with: every requirement, of every extra, pinned to
    a version its own specifier accepts (a stale pin fails here, not on a user's machine)."""
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name.lower().replace("_", "-")] = spec.version
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    environment = {**default_environment(), "extra": ""}
    for line in wanted:
        requirement = Requirement(line)
        if requirement.name == "reversehub" or (requirement.marker and not requirement.marker.evaluate(environment)):
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not in constraints.txt (make constraints)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {line}"


@pytest.fixture
def without_scale(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``pip install reversehub`` (no extra): asyncpg and redis cannot be imported."""
    find_spec = extras.importlib.util.find_spec
    monkeypatch.setattr(
        extras.importlib.util, "find_spec", lambda name, *a: None if name in ("asyncpg", "redis") else find_spec(name)
    )


def test_postgresql_without_the_extra_names_it(without_scale: None) -> None:
    from reversehub.core.db import create_engine

    with pytest.raises(extras.MissingExtra) as caught:
        create_engine("postgresql://db.test/reversehub")
    assert str(caught.value) == (
        f"a postgresql:// database URL needs the asyncpg package, which is not installed: {SCALE}"
    )


def test_redis_without_the_extra_names_it(without_scale: None) -> None:
    from reversehub.core.broker import make_broker

    with pytest.raises(extras.MissingExtra, match=r"^--redis-url needs the redis package, .*reversehub\[scale\]"):
        make_broker("redis://127.0.0.1:6379/0")


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["serve", "--database-url", "postgresql://db.test/x"],
            f"a postgresql:// database URL needs the asyncpg package, which is not installed: {SCALE}",
        ),
        (
            ["serve", "--redis-url", "redis://127.0.0.1:1/0"],
            f"--redis-url needs the redis package, which is not installed: {SCALE}",
        ),
        (
            ["db", "upgrade", "--database-url", "postgresql://db.test/x"],
            f"a postgresql:// database URL needs the asyncpg package, which is not installed: {SCALE}",
        ),
    ],
)
def test_the_cli_names_the_extra_in_one_line(without_scale: None, args: list[str], line: str) -> None:
    from reversehub.server.cli import main

    result = CliRunner().invoke(main, args, env={})
    assert (result.exit_code, result.output) == (1, f"Error: {line}\n")


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


@pytest.mark.skipif(
    os.environ.get("CI") != "true" and not os.environ.get("REVERSEHUB_TEST_FRESH_CLONE"),
    reason="two fresh installs (about 2 minutes): runs in CI, or with REVERSEHUB_TEST_FRESH_CLONE=1",
)
def test_make_run_and_make_test_at_once_on_a_fresh_clone(tmp_path: Path) -> None:
    """The README's first two commands, started together on a fresh clone: both work. Prints the
    time from the clone to /healthz answering, and the size of the .venv ``make run`` makes."""
    clone = tmp_path / "reversehub"
    started = time.monotonic()
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MAKEFLAGS", "MAKELEVEL")}
    env.update(REVERSEHUB_PORT=str(port), REVERSEHUB_DATABASE_URL=f"sqlite:///{tmp_path}/run.db")
    run = subprocess.Popen(
        ["make", "-s", "run"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: make, then the server it started
    )
    test = subprocess.Popen(
        ["make", "-s", "test", "PYTEST_ARGS=-q -p no:cacheprovider tests/test_layering.py"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        healthy = None
        deadline = time.monotonic() + 240
        while healthy is None and time.monotonic() < deadline:
            assert run.poll() is None, run.communicate()[0].decode()[-3000:]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    healthy = time.monotonic() - started
            except httpx.HTTPError:
                time.sleep(0.5)
        assert healthy is not None, "make run: /healthz did not answer within 4 minutes"
        out, _ = test.communicate(timeout=240)
        assert test.returncode == 0, out.decode()[-3000:]
        print(f"\nfresh clone -> /healthz with make run: {healthy:.0f} s (make test installing at the same time)")
        print(f".venv with the runtime and the test tools: {_du(clone / '.venv') / 1e6:.0f} MB")
    finally:
        for proc in (run, test):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(20)
