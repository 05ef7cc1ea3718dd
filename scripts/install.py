"""Make's installer: ``.venv`` with what a target needs, one install at a time.

    python3 scripts/install.py run    the runtime dependencies (``make run``)
    python3 scripts/install.py dev    those plus the test and lint tools (``make test``, ``make install``)

Versions come from ``constraints.txt``: what the suite was run with, so a fresh machine gets what CI
tested. ``make run & make test`` on a fresh clone start two of these at once: two pip processes in
one environment overwrite each other's files, so the whole install (creating the environment too)
holds an exclusive lock on this script; the second waits, then finds its part done or adds the rest.
Needs Python 3.11+ and nothing else (fcntl: POSIX, like make).
"""

from __future__ import annotations

import fcntl
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
INPUTS = [ROOT / "pyproject.toml", ROOT / "constraints.txt"]
# What each target installs, and the stamps that show it is there (dev includes the runtime).
TARGETS = {
    "run": (".", "the runtime dependencies", ["run", "dev"]),
    "dev": (".[dev]", "the runtime dependencies and the test tools", ["dev"]),
}


def stamp(name: str) -> Path:
    return VENV / f".installed-{name}"


def up_to_date(name: str) -> bool:
    path = stamp(name)
    return path.exists() and all(path.stat().st_mtime >= source.stat().st_mtime for source in INPUTS)


def install(target: str) -> None:
    requirement, what, satisfied_by = TARGETS[target]
    if any(up_to_date(name) for name in satisfied_by):
        return
    if not PYTHON.exists():
        venv.create(VENV, with_pip=True)
    print(f"installing {what} into .venv (pinned by constraints.txt; about a minute the first time)", flush=True)
    started = time.monotonic()
    command = [str(PYTHON), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"), "-e", requirement]
    subprocess.run(command, cwd=ROOT, check=True)
    stamp(target).touch()
    print(f"installed in {time.monotonic() - started:.0f} s", flush=True)


def main(argv: list[str]) -> int:
    if sys.version_info < (3, 11):  # noqa: UP036  (run by whatever python3 a fresh machine has)
        print(f"reversehub needs Python 3.11 or newer, not {sys.version.split()[0]}: make PYTHON=python3.11 ...")
        return 1
    if len(argv) != 2 or argv[1] not in TARGETS:
        print(f"usage: {argv[0]} {'|'.join(TARGETS)}")
        return 2
    with open(__file__, "rb") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, even if pip fails
        try:
            install(argv[1])
        except subprocess.CalledProcessError as exc:
            return exc.returncode or 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
