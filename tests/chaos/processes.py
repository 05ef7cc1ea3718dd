"""The processes of a chaos test: our own PostgreSQL and Redis, ``reversehub serve``, and which of
them is sending.

Nothing here touches the shared PostgreSQL (5432) or Redis (6379): each test starts its own
PostgreSQL cluster (initdb + pg_ctl, fsync off) and its own ``redis-server`` on free ports in a
temporary directory, so that it may stop and restart them as it likes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.chaos.figures import Receiver
from tests.support import free_port, unavailable, wait_for

PG_BIN = Path(os.environ.get("REVERSEHUB_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REVERSEHUB = str(Path(sys.executable).with_name("reversehub"))


def scratch_dir() -> Path:
    """A temporary directory PostgreSQL may enter: initdb refuses root, so under root the cluster runs
    as ``postgres``, who cannot enter pytest's per-user (0700) temporary tree."""
    path = Path(tempfile.mkdtemp(prefix="reversehub-chaos-"))
    path.chmod(0o755)
    return path


def _run_as() -> dict[str, str]:
    return {"user": "postgres"} if os.geteuid() == 0 else {}


class Postgres:
    """A PostgreSQL cluster of our own: ``start()``, ``stop()`` (immediate: as if it crashed), ``url``."""

    def __init__(self, root: Path) -> None:
        if not (PG_BIN / "initdb").exists():
            unavailable(f"PostgreSQL binaries not found in {PG_BIN} (REVERSEHUB_TEST_PG_BIN)")
        root.mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        subprocess.run(
            [PG_BIN / "initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            check=True,
            capture_output=True,
            **_run_as(),  # type: ignore[call-overload]
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres?ssl=disable"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [PG_BIN / "pg_ctl", "-D", self.data, "-w", "-t", "60", *args],
            check=True,
            capture_output=True,
            **_run_as(),  # type: ignore[call-overload]
        )

    def start(self) -> None:
        # fsync and full-page writes off: they guard against the machine crashing, and only the server
        # process does. synchronous_commit stays on: off, an immediate stop loses commits already
        # acknowledged (a publish answered 204 vanished that way), which no hub can make up for.
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=200"
            " -c fsync=off -c full_page_writes=off"
        )
        self._ctl("-o", options, "-l", str(self.root / "postgres.log"), "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


class Redis:
    """A ``redis-server`` of our own, nothing persisted: a restart loses every key, as a crash would."""

    def __init__(self, root: Path) -> None:
        if shutil.which("redis-server") is None:
            unavailable("redis-server not found (apt-get install redis-server)")
        self.root = root
        self.port = free_port()
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        with (self.root / "redis.log").open("ab") as log:
            self.popen = subprocess.Popen([*argv, "--dir", str(self.root)], stdout=log, stderr=log)
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                assert self.popen.poll() is None, (self.root / "redis.log").read_text()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()  # SIGKILL: connections reset, keys gone
            self.popen.wait(10)
        self.popen = None


@dataclass
class Serve:
    """One ``reversehub serve`` process; :meth:`start` after :meth:`kill` starts it again on its port."""

    flags: list[str]
    port: int
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [REVERSEHUB, "serve", "--port", str(self.port), "--public-url", self.base, *self.flags]
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
            )

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            assert self.popen is not None
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self, client: httpx.AsyncClient, timeout: float = 45) -> None:
        async def up() -> bool:
            assert self.alive(), self.output()[-4000:]
            try:
                return (await client.get(self.base + "/healthz", timeout=5)).status_code == 200
            except httpx.TransportError:
                return False

        await wait_for(up, timeout=timeout, interval=0.05)


def logged(*procs: Serve) -> dict[str, int]:
    """What the servers logged of errors: tracebacks (retried failures log theirs too), and 500s."""
    text = "".join(p.output() for p in procs)
    return {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "asgi_500": text.count("Exception in ASGI application"),
    }


async def sending(receiver: Receiver, procs: list[Serve]) -> Serve:
    """The process with the most deliveries in flight right now: rows it has claimed and not yet
    recorded, so that killing it is the fault that matters (whoever claims first may take every due
    row; a process killed between two batches leaves nothing behind). The receiver holds its answers
    a moment so that deliveries pile up in flight; their senders are found from the source ports and
    the sockets each process holds (Linux ``/proc``)."""
    delay, receiver.delay = receiver.delay, 1.0
    try:
        counts: list[int] = []

        def counted() -> bool:
            inode_of_port = _tcp_inodes()
            counts[:] = []
            for proc in procs:
                assert proc.popen is not None
                held = _socket_inodes(proc.popen.pid)
                counts.append(sum(n for port, n in receiver.in_flight.items() if inode_of_port.get(port) in held))
            return max(counts) > 0

        await wait_for(counted, timeout=10, interval=0.05)
        return procs[counts.index(max(counts))]
    finally:
        receiver.delay = delay


def _tcp_inodes() -> dict[int, str]:
    """Local port -> socket inode of every TCP socket on the machine."""
    found: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                found[int(fields[1].rsplit(":", 1)[1], 16)] = fields[9]
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue  # closed meanwhile
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes
