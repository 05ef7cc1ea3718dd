"""Serving the app: uvicorn with a drain-first shutdown, and ``--workers N`` processes on one socket.

Graceful shutdown (SIGTERM or Ctrl-C): stop accepting, end held polls with 204 and stop taking hub
work, let in-flight requests finish within the grace time, then run the lifespan shutdown. uvicorn
alone does these in another order: it waits for open requests *before* the lifespan shutdown, so
every held poll (up to ``--poll-timeout``) would keep the process for the whole grace time and then
be cut off rather than answered. :class:`DrainingServer` tells the relay and the hub first.

``--workers N`` runs N such servers in child processes that share one listening socket (the kernel
spreads connections), with the Redis broker between them. The parent migrates the schema once (N
processes racing on Alembic could deadlock), restarts a worker that dies, and on SIGTERM/SIGINT
forwards SIGTERM to every worker and waits for them to drain.

With an admin (``--admin-token``) and path-based relay names, the dashboard gets a listener of its
own (``--admin-listen``): every server serves both sockets and :class:`AdminSplit` hands what came in
through the admin socket to the admin app, which shares the main app's services. One server, one
lifespan, one drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from types import FrameType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.types import ASGIApp, Receive, Scope, Send

from reversehub.core.settings import SHUTDOWN_GRACE, Settings
from reversehub.server import startup

logger = logging.getLogger(__name__)

GC_THRESHOLDS = (50_000, 20, 10)
# A worker that dies this soon after its start counts as a start failure; a few in a row end the supervisor.
QUICK_EXIT_SECONDS = 10.0
MAX_QUICK_EXITS = 5
# Exit status of a process whose background work ended while it served (reversehub.core.supervise).
EXIT_FAILED = 4
M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)
MALLOC_ARENAS = 2
# Open files kept for what a serving process opens itself (database and broker connections, outbound
# deliveries, verifications and fetches, logs): clients that fill every connection the cap allows must
# not make the hub's own writes and deliveries fail for want of a file descriptor (EMFILE).
FD_RESERVE = 1024


def setup_logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # httpx logs every request's full URL at INFO: callback URLs carry subscribers' tokens and
    # verification GETs the challenge. Our own access log (reversehub.server.accesslog) is the one to read.
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class _WithoutWebSocketHint(logging.Filter):
    """With ``ws="none"`` uvicorn answers an upgrade request as plain HTTP, and logs, for every one,
    a hint to install a WebSocket library. We have no use for one: drop the hint (uvicorn's
    "Unsupported upgrade request." stays, as it always did for other upgrades such as h2c)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No supported WebSocket library")


WITHOUT_WEBSOCKET_HINT = _WithoutWebSocketHint()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """Let every thread share ``arenas`` glibc malloc arenas.

    glibc gives each thread that allocates its own arena (up to 8 per core), and an arena keeps
    what it once held. Our threads are aiosqlite's, one per pooled SQLite connection, and libuv's
    resolver pool; a fan-out grows the SQLite pool to its ten connections, each of whose arenas
    would keep its high-water mark (bench/memory.py shows the difference). SQLite runs one writer at
    a time, so they hardly contend for the shared arenas. Elsewhere (musl, macOS) there is no mallopt: no-op.
    """
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_ARENA_MAX, arenas)


def http_protocol() -> type[asyncio.Protocol] | str:
    """uvicorn's httptools protocol with coalesced writes (reversehub.server.protocol), else uvicorn's choice."""
    try:
        from reversehub.server.protocol import CoalescingHttpToolsProtocol
    except ImportError:  # httptools is missing: uvicorn falls back to h11
        return "auto"
    return CoalescingHttpToolsProtocol


def raise_fd_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit, and return the soft limit.

    Every connection is a file descriptor, a held poll too, and the soft limit is often 1,024 while
    the hard one is far higher (systemd: 524,288): the process is allowed to raise it itself, as Go
    programs do at start. Worker processes inherit it. 0 when there is no such limit (not POSIX).
    """
    try:
        import resource
    except ImportError:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # macOS refuses RLIM_INFINITY: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    return 0 if soft == resource.RLIM_INFINITY else soft


def connection_cap(requested: int, fd_limit: int) -> int:
    """The connection cap a process with ``fd_limit`` open files can keep: ``requested`` (0: none), but
    at most the limit less :data:`FD_RESERVE` (a quarter of a small limit)."""
    if requested == 0 or fd_limit <= 0:
        return requested
    return max(1, min(requested, fd_limit - min(FD_RESERVE, fd_limit // 4)))


def config_for(app: Any, settings: Settings) -> uvicorn.Config:
    options: dict[str, Any] = {}
    try:
        from reversehub.server.protocol import ListenerConfig, ListenerLimits
    except ImportError:
        # httptools is missing, and uvicorn's h11 protocol serves: it bounds a request head (400
        # above the size) but has no head timeout and no connection cap.
        make: type[uvicorn.Config] = uvicorn.Config
        options["h11_max_incomplete_event_size"] = settings.max_request_head_size
    else:
        make = ListenerConfig
        fd_limit = raise_fd_limit()
        cap = connection_cap(settings.max_connections, fd_limit)
        if cap != settings.max_connections:
            logger.warning(
                "--max-connections %d lowered to %d: the open-file limit is %d (ulimit -n)",
                settings.max_connections,
                cap,
                fd_limit,
            )
        options["limits"] = ListenerLimits(
            head_timeout=settings.request_head_timeout,
            max_head_size=settings.max_request_head_size,
            max_connections=cap,
        )
    config = make(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol(),
        interface="asgi3",  # AdminSplit is a plain callable returning the app's coroutine
        loop="auto",  # uvloop when installed (uvicorn[standard] installs it), like the bench's bare server
        # No endpoint speaks WebSocket (the dashboard's live charts are server-sent events): "auto"
        # would load the websockets package into every server for nothing.
        ws="none",
        lifespan="on",
        access_log=False,  # ours (reversehub.server.accesslog) leaves capability URLs out
        log_level=settings.log_level,
        timeout_graceful_shutdown=int(SHUTDOWN_GRACE),
        ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
        **options,
    )
    logging.getLogger("uvicorn.error").addFilter(WITHOUT_WEBSOCKET_HINT)  # once: the same filter object
    return config


def find_app(app: Any) -> Starlette | None:
    """Our Starlette app under uvicorn's wrappers (proxy headers, message logging)."""
    while app is not None and not isinstance(app, Starlette):
        app = getattr(app, "app", None)
    return app


async def drain(app: Starlette, timeout: float = SHUTDOWN_GRACE) -> None:
    """End held polls with 204 and stop taking hub work.

    Both ``aclose()`` must be idempotent: the lifespan shutdown calls them again.
    """
    for name in ("relay", "hub"):  # the relay first: its pollers go and poll another process at once
        service = getattr(app.state, name, None)
        if service is None:
            continue
        try:
            await asyncio.wait_for(service.aclose(), timeout)
        except Exception:
            logger.exception("draining the %s failed", name)


class DrainingServer(uvicorn.Server):
    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # Everything alive now (modules, the app, the engine) lives as long as the process: move it
        # out of the collector's sight, so that a full collection, which the allocations of a busy
        # server trigger every few seconds, walks the objects of requests in flight and not every
        # class SQLAlchemy and uvicorn ever defined (CPython docs, gc.freeze).
        gc.collect()
        gc.freeze()
        # A request's objects live across a few hundred allocations (a relayed request, a delivery
        # in flight), so at CPython's default of 700 the young generation promotes nearly all of
        # them and full collections follow, each walking every request in flight: in a 10,000
        # callback fan-out much of the hub's CPU goes to the collector. At 50,000 they die young
        # (bench/fanout.py shows the difference). Cycles wait a little longer to be freed;
        # everything else is freed by reference counting, which the thresholds do not touch.
        gc.set_threshold(*GC_THRESHOLDS)

    failed: str | None = None  # why the app's background work ended, when it did (then exit non-zero)

    async def on_tick(self, counter: int) -> bool:
        app = find_app(self.config.loaded_app)
        reason = getattr(app, "failed", None)
        if reason is not None and self.failed is None:
            # Never a half-dead process: without its background work (outbox, verifier, relay
            # clock) it would accept work it cannot do. Its supervisor starts a fresh one.
            self.failed = reason
            logger.critical("the app's background work is gone (%s): stopping, to be restarted", reason)
            return True
        return await super().on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first, so a poller whose poll ends now reconnects to another process.
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        app = find_app(self.config.loaded_app)
        if app is not None:
            await drain(app)
        await super().shutdown(sockets)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's handlers (``handle_exit``: the first signal stops, a second Ctrl-C forces), but
        the signal is not raised again once the server is done: uvicorn's would end the process
        "killed by SIGTERM", and we drained, which is a clean exit (status 0)."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signals can only be handled on the main thread
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in uvicorn.server.HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def announce(settings: Settings, admin_sock: socket.socket | None) -> None:
    """Log what a person needs to reach this server (reversehub.server.startup)."""
    for warning in startup.warnings(settings):
        logger.warning("%s", warning)
    admin = None if admin_sock is None else admin_url(admin_sock, settings)
    for line in startup.summary(settings, admin):
        logger.info("%s", line)


def serve(settings: Settings) -> None:
    """Run in this process, or supervise ``settings.workers`` worker processes."""
    setup_logging(settings)
    if settings.workers <= 1:
        limit_malloc_arenas()
        from reversehub.server.app import admin_listener_wanted, create_app

        if not admin_listener_wanted(settings):
            announce(settings, None)
            server = DrainingServer(config_for(create_app(settings), settings))
            server.run()
        else:
            admin_sock = bind_admin(settings.admin_listen)
            announce(settings, admin_sock)
            config = config_for(with_admin(create_app(settings), admin_sock), settings)
            server = DrainingServer(config)
            server.run(sockets=[config.bind_socket(), admin_sock])
        if not server.started:
            sys.exit(3)
        if server.failed is not None:
            sys.exit(EXIT_FAILED)
        return
    Supervisor(settings).run()


def _worker(settings: Settings, sock: socket.socket, admin_sock: socket.socket | None = None) -> None:
    """Entry point of one worker process (spawned: it imports everything afresh)."""
    setup_logging(settings)
    limit_malloc_arenas()
    from reversehub.server.app import create_app

    main = create_app(settings)
    app: ASGIApp = main
    sockets = [sock]
    if admin_sock is not None:
        app = with_admin(main, admin_sock)
        sockets.append(admin_sock)
    server = DrainingServer(config_for(app, settings))
    threading.Thread(target=_leave_with, args=(os.getppid(), server), name="parent-watch", daemon=True).start()
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(3)
    if server.failed is not None:
        sys.exit(EXIT_FAILED)  # the supervisor starts another worker


def _leave_with(parent: int, server: DrainingServer) -> None:
    """A worker's watch on its supervisor. One that was killed (SIGKILL, the OOM killer) cannot stop
    its workers, and a worker left behind would serve the shared socket with nobody to stop or
    restart it: drain, and if that cannot end (a worker still starting up), leave all the same."""
    while os.getppid() == parent:
        time.sleep(0.5)
    logger.warning("supervisor [%s] is gone: draining", parent)
    server.should_exit = True  # read by the server's loop on its next tick
    time.sleep(SHUTDOWN_GRACE + 5)
    os._exit(1)


# The admin listener --------------------------------------------------------------------------------
def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError when it is not one."""
    host, sep, port = address.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {address!r}")
    return host, int(port)


def bind_admin(address: str) -> socket.socket:
    """Bind the admin listener (``--admin-listen``); exit with status 3 if we cannot."""
    host, port = parse_address(address)
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as exc:
        logger.error("cannot listen on --admin-listen %s: %s", address, exc)
        sys.exit(3)
    sock.set_inheritable(True)
    return sock


def admin_url(sock: socket.socket, settings: Settings) -> str:
    """The admin listener's URL: uvicorn serves every socket it is given with the same TLS."""
    host, port = sock_address(sock)
    shown = f"[{host}]" if ":" in host else host
    return f"{'https' if settings.ssl_certfile else 'http'}://{shown}:{port}/"


class AdminSplit:
    """Two listeners, one app's services: a request that came in through the admin socket goes to the
    admin app, every other one (and the lifespan) to the main app.

    The socket a connection arrived on is its local address (``scope["server"]``, from the socket,
    never from a header), so no request on the main listener can reach the admin app.
    """

    def __init__(self, app: ASGIApp, admin: ASGIApp, admin_sock: socket.socket) -> None:
        self.app = app  # find_app() walks .app to the main Starlette
        self.admin = admin
        host, self._port = sock_address(admin_sock)
        self._host = None if host in ("0.0.0.0", "::") else host  # a wildcard bind: any local address

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A plain function returning the app's coroutine: no frame of its own under every held poll.
        server = scope.get("server")
        if (
            server is not None
            and server[1] == self._port
            and (self._host is None or server[0] == self._host)
            and scope["type"] != "lifespan"
        ):
            return self.admin(scope, receive, send)
        return self.app(scope, receive, send)


def sock_address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


def with_admin(app: Starlette, admin_sock: socket.socket) -> AdminSplit:
    """``app`` on its listener, and its admin app (reversehub.server.app.create_admin_app) on ``admin_sock``."""
    from reversehub.server.app import create_admin_app

    app.state.admin_url = admin_url(admin_sock, app.state.settings)  # the landing page says where the dashboard is
    return AdminSplit(app, create_admin_app(app), admin_sock)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._context = multiprocessing.get_context("spawn")
        self._started: dict[int | None, float] = {}

    def _migrate_once(self) -> None:
        from reversehub.core import db

        async def run() -> None:
            engine = db.create_engine(self.settings.database_url)
            try:
                await db.migrate(engine)
            finally:
                await engine.dispose()

        asyncio.run(run())

    def _start(self, sock: socket.socket, admin_sock: socket.socket | None) -> Any:
        worker_settings = replace(self.settings, migrate=False, workers=1)
        process = self._context.Process(target=_worker, args=(worker_settings, sock, admin_sock), daemon=False)
        process.start()
        self._started[process.pid] = time.monotonic()
        logger.info("started worker process [%s]", process.pid)
        return process

    def _on_signal(self, sig: int, _frame: FrameType | None) -> None:
        logger.info("received %s: draining %d workers", signal.Signals(sig).name, self.settings.workers)
        self._stop.set()

    def run(self) -> None:
        if self.settings.migrate:
            self._migrate_once()
        sock = config_for("reversehub.server.app:create_app", self.settings).bind_socket()
        admin_sock = None
        if self.settings.admin_token is not None:  # else the parent never imports the app
            from reversehub.server.app import admin_listener_wanted

            if admin_listener_wanted(self.settings):
                admin_sock = bind_admin(self.settings.admin_listen)
        announce(self.settings, admin_sock)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        processes = [self._start(sock, admin_sock) for _ in range(self.settings.workers)]
        quick_exits = 0
        while not self._stop.wait(0.25):
            for i, process in enumerate(processes):
                if process.is_alive():
                    continue
                if time.monotonic() - self._started.pop(process.pid, 0.0) < QUICK_EXIT_SECONDS:
                    quick_exits += 1
                else:
                    quick_exits = 0
                if quick_exits >= MAX_QUICK_EXITS:
                    logger.error("workers keep failing at start; giving up")
                    self._stop.set()
                    break
                logger.warning("worker [%s] exited with %s; starting another", process.pid, process.exitcode)
                processes[i] = self._start(sock, admin_sock)
        self._shutdown(processes)
        sock.close()
        if admin_sock is not None:
            admin_sock.close()
        if quick_exits >= MAX_QUICK_EXITS:
            sys.exit(3)

    def _shutdown(self, processes: list[Any]) -> None:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_GRACE + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                logger.warning("worker [%s] did not stop in time; killing it", process.pid)
                process.kill()
                process.join()
