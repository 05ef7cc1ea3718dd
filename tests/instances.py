"""PostgreSQL and Redis servers of a test's own, in a temp dir on a free port, to stop and restart.

The shared servers (PostgreSQL on 5432, Redis on 6379) serve every test run on the machine at once:
a test that needs its database or broker to go away starts one of these instead and never touches
the shared ones. Each is stopped (and its files removed with the temp dir) when the test ends.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import free_port, unavailable

PG_BIN = Path(os.environ.get("REVERSEHUB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout}s")
        time.sleep(0.05)


class OwnPostgres:
    """A PostgreSQL cluster in ``directory``, run by an unprivileged user (initdb refuses root)."""

    def __init__(self) -> None:
        # Its own directory straight under the system temp dir: pytest's tmp_path is private to root
        # (mode 0700 on the way), where the unprivileged server could not reach its files.
        self.directory = Path(tempfile.mkdtemp(prefix="reversehub-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres?ssl=disable"
        self._user: list[str] = []

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*self._user, *args], capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}")
        return done

    def init(self) -> None:
        if not (PG_BIN / "initdb").exists():
            unavailable(f"no PostgreSQL binaries in {PG_BIN}")
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root: run them as nobody, owning the directory.
            shutil.chown(self.directory, "nobody", pwd.getpwnam("nobody").pw_gid)
            self._user = ["runuser", "-u", "nobody", "--"]
        self._run(str(PG_BIN / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        # -l: the server must not inherit our pipes, or waiting for pg_ctl would wait for the server.
        log = str(self.directory / "postgres.log")
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", log, "-o", options, "-w", "-t", "60", "start")
        _wait(lambda: _listening(self.port), 30, "PostgreSQL listening")

    def stop(self) -> None:
        """A fast shutdown: sessions are ended (SQLSTATE 57P01), as a restart or failover does."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop", check=False)


@contextmanager
def own_postgres() -> Iterator[OwnPostgres]:
    pg = OwnPostgres()
    try:
        pg.init()
        pg.start()
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(pg.directory, ignore_errors=True)


class OwnRedis:
    """A redis-server without persistence on a free port: a restart empties it, as a crash would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            unavailable("redis-server is not installed")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: _listening(self.port), 20, "redis-server listening")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(timeout=20)
        self._process = None


@contextmanager
def own_redis(directory: Path) -> Iterator[OwnRedis]:
    redis = OwnRedis(directory)
    redis.start()
    try:
        yield redis
    finally:
        redis.stop()
