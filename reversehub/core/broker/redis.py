"""The Redis broker: any number of processes, on any hosts, share queues, channels and keys.

Layout in Redis (every name starts with the prefix, ``reversehub:`` unless the URL says
``?prefix=...``, so several deployments or test runs can share one server):

- ``{prefix}q:{queue}`` is a list (RPUSH at the back, LPUSH at the front, LPOP to take). Each push
  also publishes on ``{prefix}qn:{queue}`` (in the same script) so that processes with consumers waiting on that queue
  try to take it at once.
- ``{prefix}ch:{channel}`` is a pub/sub channel.
- ``{prefix}k:{key}`` is a plain string with an optional PX expiry.

Why no BLPOP: a blocked BLPOP holds a whole Redis connection. 10,000 idle pollers would need 10,000
connections (Redis's default ``maxclients``). Instead each process keeps ONE pub/sub connection that
multiplexes every subscription, and one small task per queue with local waiters, which takes items
with LPOP when a push notification (or a new waiter) arrives and hands them to its waiters in the
order they started waiting. Across processes, whichever process's LPOP comes first wins; an item
is still handed to exactly one consumer because LPOP is atomic.

Commands go over ONE connection per broker, pipelined (:class:`_Commands`): written as they come,
their replies matched in order. The relay makes seven commands per relayed request, and redis-py's
client (a pooled connection, its retry and timeout machinery per command) cost several times the CPU
of the command itself.

Failures: a Redis error on a command raises :class:`BrokerUnavailable` (the relay answers 503).
The pub/sub connection reconnects by itself with backoff and resubscribes; while it is down, channel
messages are missed (channels are fire-and-forget) and queue waiters are woken to look again once
it is back, so no queued item waits for a notification that was lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reversehub.core.backoff import backoff
from reversehub.core.broker.base import BrokerClosed, BrokerUnavailable

logger = logging.getLogger(__name__)

T = TypeVar("T")
DEFAULT_PREFIX = "reversehub:"

# INCR, and on creation PEXPIRE, in one atomic step (a crash between the two would leave a counter
# that never expires).
_INCR = """
local v = redis.call('INCRBY', KEYS[1], ARGV[2])
if v == tonumber(ARGV[2]) and tonumber(ARGV[1]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return v
"""

# RPUSH (or LPUSH) and the notification to consumers waiting on other processes, in one command: a
# script costs the client less than a pipeline of the two, and a push is made per relayed request.
_PUSH = """
local n = redis.call(ARGV[2], KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], '')
return n
"""

# SET NX, and only when it stored, SET of a second key: one round trip for the relay's "bind these
# requests to this request URL and note that the name's application is working on them".
_SET_IF_ABSENT = """
local px = tonumber(ARGV[2])
local stored
if px > 0 then
  stored = redis.call('SET', KEYS[1], ARGV[1], 'PX', px, 'NX')
else
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if not stored then return 0 end
px = tonumber(ARGV[4])
if px > 0 then redis.call('SET', KEYS[2], ARGV[3], 'PX', px) else redis.call('SET', KEYS[2], ARGV[3]) end
return 1
"""

# A sink receives a message, or None meaning "(re)subscribed: you may have missed messages".
Sink = Callable[[bytes | None], None]


def split_prefix(url: str) -> tuple[str, str]:
    """``redis://h/0?prefix=x:`` -> (``redis://h/0``, ``x:``); other query parameters stay for redis-py."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefix = next((v for k, v in query if k == "prefix"), DEFAULT_PREFIX)
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix


@contextmanager
def _translated() -> Iterator[None]:
    """Redis connection trouble becomes BrokerUnavailable where it enters (STYLE: translate at the boundary)."""
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
    except RedisError as exc:
        raise BrokerUnavailable(f"redis error: {exc}") from exc


def _px(ttl: float | None) -> int | None:
    """A time-to-live in whole milliseconds, at least one (Redis refuses PX 0)."""
    return max(1, math.ceil(ttl * 1000)) if ttl is not None else None


class _Lost:
    """In a subscription's queue: the pub/sub connection was lost there."""


_LOST = _Lost()


class RedisSubscription:
    """A channel's messages; when the pub/sub connection is lost, the next :meth:`get` raises
    :class:`BrokerUnavailable` once (messages published meanwhile are gone), so that a waiter (a
    relayed request waiting for its reply) is answered at once instead of waiting for a message that
    will never come. Later gets go on with what arrives after the reconnect."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | _Lost | None] = asyncio.Queue()
        self._lost_pending = False

    def _sink(self, message: bytes | None) -> None:
        if message is not None:
            self._queue.put_nowait(message)

    def _lost(self) -> None:
        if not self._lost_pending:
            self._lost_pending = True
            self._queue.put_nowait(_LOST)

    def _close(self) -> None:
        self._queue.put_nowait(None)

    async def get(self) -> bytes:
        message = await self._queue.get()
        if message is None:
            self._queue.put_nowait(None)  # every later get() fails too
            raise BrokerClosed("broker is closed")
        if isinstance(message, _Lost):
            self._lost_pending = False
            raise BrokerUnavailable("redis unavailable: the pub/sub connection was lost; messages may have been missed")
        return message

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            yield await self.get()


class _Waiters:
    """Consumers of one queue waiting in this process, and the task that feeds them."""

    def __init__(self) -> None:
        self.futures: deque[asyncio.Future[bytes]] = deque()
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class _PubSub:
    """ONE pub/sub connection per broker, multiplexing every channel and dispatching locally.

    A per-subscription SUBSCRIBE connection would cost a connection and a round trip per relayed
    request; here a channel is subscribed on Redis once, while at least one local sink listens.
    """

    def __init__(
        self, pool: aioredis.ConnectionPool, connect_timeout: float, on_lost: Callable[[], None] | None = None
    ) -> None:
        self._conn: AbstractConnection = pool.make_connection()  # type: ignore[no-untyped-call]
        self._on_lost = on_lost
        self._connect_timeout = connect_timeout
        self._sinks: dict[bytes, set[Sink]] = {}
        self._acks: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._connected = asyncio.Event()
        self._write = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None

    def _start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name="reversehub-redis-pubsub")

    async def _send(self, *args: bytes) -> None:
        try:
            await asyncio.wait_for(self._connected.wait(), self._connect_timeout)
        except TimeoutError:
            raise BrokerUnavailable("redis unavailable: pub/sub connection is down") from None
        async with self._write:
            with _translated():
                await self._conn.send_command(*args, check_health=False)

    async def add(self, channel: bytes, sink: Sink) -> None:
        """Register ``sink``; returns once Redis has acknowledged the subscription."""
        self._start()
        sinks = self._sinks.get(channel)
        if sinks is not None:
            sinks.add(sink)
            pending = self._acks.get(channel)
            if pending:  # the first subscriber's SUBSCRIBE is still on its way
                try:
                    await asyncio.wait_for(asyncio.shield(pending[-1]), self._connect_timeout)
                except BaseException:
                    await self.discard(channel, sink)
                    raise
            return
        self._sinks[channel] = {sink}
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks.setdefault(channel, deque()).append(ack)
        try:
            await self._send(b"SUBSCRIBE", channel)
            await asyncio.wait_for(asyncio.shield(ack), self._connect_timeout)
        except BaseException as exc:
            pending = self._acks.get(channel)
            if pending is not None and ack in pending:
                pending.remove(ack)  # so that a later acknowledgement resolves a later SUBSCRIBE
                if not pending:
                    del self._acks[channel]
            await self.discard(channel, sink)
            if isinstance(exc, TimeoutError):
                raise BrokerUnavailable("redis unavailable: no SUBSCRIBE acknowledgement") from None
            raise

    async def discard(self, channel: bytes, sink: Sink) -> None:
        sinks = self._sinks.get(channel)
        if sinks is None:
            return
        sinks.discard(sink)
        if sinks:
            return
        del self._sinks[channel]
        if self._connected.is_set():
            try:
                await self._send(b"UNSUBSCRIBE", channel)
            except BrokerUnavailable:
                pass  # the connection went away, and the subscription with it

    async def _read_loop(self) -> None:
        failures = 0
        while True:
            try:
                if not self._connected.is_set():
                    await self._conn.connect()  # type: ignore[no-untyped-call]
                    if self._sinks:  # after a reconnect: resubscribe all, the acks wake queue waiters
                        await self._conn.send_command(b"SUBSCRIBE", *self._sinks, check_health=False)
                    self._connected.set()
                    failures = 0
                response = await self._conn.read_response(timeout=math.inf, push_request=True)
            except (RedisError, OSError) as exc:
                if self._connected.is_set():
                    logger.warning("redis pub/sub connection lost (%s); reconnecting", exc)
                    if self._on_lost is not None:
                        self._on_lost()
                self._connected.clear()
                await self._conn.disconnect(nowait=True)
                failures += 1
                await asyncio.sleep(backoff(failures, 0.1, 1.0))
                continue
            self._dispatch(response)

    def _dispatch(self, response: Any) -> None:
        if not isinstance(response, list) or len(response) < 3:
            return
        kind, channel, payload = response[0], response[1], response[2]
        if kind == b"message":
            for sink in list(self._sinks.get(channel, ())):
                sink(payload)
        elif kind == b"subscribe":
            pending = self._acks.get(channel)
            if pending:
                ack = pending.popleft()
                if not pending:
                    del self._acks[channel]
                if not ack.done():
                    ack.set_result(None)
            for sink in list(self._sinks.get(channel, ())):
                sink(None)

    async def aclose(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
        for pending in self._acks.values():
            for ack in pending:
                if not ack.done():
                    ack.set_exception(BrokerClosed("broker is closed"))
        self._acks.clear()
        self._sinks.clear()
        await self._conn.disconnect(nowait=True)


class _Commands:
    """ONE connection for commands, pipelined: each command is written at once and its reply is
    matched in order by a reader task (Redis answers a connection's commands in order).

    redis-py's client takes a pooled connection per command, wraps it in its retry and timeout
    machinery and parses the reply in the caller: several times the CPU of the command itself, and a
    relayed request makes seven. A command whose reply is overdue (``timeout``) or whose connection
    fails fails with :class:`BrokerUnavailable`, with every command still waiting on that
    connection (their replies can no longer be matched); the next command connects again.
    """

    def __init__(self, pool: aioredis.ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: AbstractConnection | None = None
        self._pending: deque[asyncio.Future[Any]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()  # disconnects of broken connections

    async def _connected(self) -> AbstractConnection:
        async with self._connecting:
            if self._conn is None:
                conn: AbstractConnection = self._pool.make_connection()  # type: ignore[no-untyped-call]
                with _translated():
                    await conn.connect()  # type: ignore[no-untyped-call]
                self._conn = conn
                self._reader = asyncio.get_running_loop().create_task(self._read(conn))
            return self._conn

    async def call(self, *args: Any) -> Any:
        """Run one command; a connection found broken when it is written is opened again once (a
        Redis restart is survived, as redis-py's retry did)."""
        for attempt in (1, 2):
            conn = self._conn or await self._connected()
            fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            try:
                conn._writer.writelines(conn.pack_command(*args))  # type: ignore[union-attr]
            except (OSError, RuntimeError, AttributeError) as exc:  # closed, or closing, under us
                self._lost(conn, exc)
                if attempt == 1:
                    continue
                raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
            self._pending.append(fut)
            timer = asyncio.get_running_loop().call_later(self._timeout, self._overdue, conn, fut)
            try:
                return await fut
            finally:
                timer.cancel()
        raise AssertionError("unreachable")

    def _overdue(self, conn: AbstractConnection, fut: asyncio.Future[Any]) -> None:
        if not fut.done():
            self._lost(conn, RedisTimeoutError("no reply in time"))

    def _lost(self, conn: AbstractConnection, exc: BaseException) -> None:
        """``conn`` is broken: fail what waits on it, and let the next command connect again."""
        if self._conn is not conn:
            return
        self._conn = None
        pending, self._pending = self._pending, deque()
        error = BrokerUnavailable(f"redis unavailable: {exc}")
        for fut in pending:
            if not fut.done():
                fut.set_exception(error)
        if self._reader is not None and self._reader is not asyncio.current_task():
            self._reader.cancel()
        self._reader = None
        task = asyncio.get_running_loop().create_task(conn.disconnect(nowait=True))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _read(self, conn: AbstractConnection) -> None:
        while True:
            try:
                reply: Any = await conn.read_response(timeout=math.inf)
            except ResponseError as exc:
                reply = exc
            except (RedisError, OSError) as exc:
                self._lost(conn, exc)
                return
            if not self._pending:
                self._lost(conn, RedisError("a reply nobody asked for"))
                return
            fut = self._pending.popleft()
            if fut.done():
                continue  # its caller was cancelled: the reply is dropped (LPOP: see RedisBroker._take)
            if isinstance(reply, ResponseError):
                fut.set_exception(reply)
            else:
                fut.set_result(reply)

    async def aclose(self) -> None:
        conn, reader = self._conn, self._reader
        self._conn = self._reader = None
        for fut in self._pending:
            if not fut.done():
                fut.set_exception(BrokerClosed("broker is closed"))
        self._pending.clear()
        if reader is not None:
            reader.cancel()
            try:
                await reader
            except asyncio.CancelledError:
                pass
        if conn is not None:
            await conn.disconnect(nowait=True)
        await asyncio.gather(*self._closing, return_exceptions=True)


class RedisBroker:
    """The broker over Redis. ``url`` is a redis:// URL, optionally with ``?prefix=name:``."""

    spans_processes = True
    never_suspends = False

    def __init__(
        self,
        url: str,
        *,
        prefix: str | None = None,
        connect_timeout: float = 2.0,
        command_timeout: float = 5.0,
        linger: float = 2.0,
        max_connections: int = 64,
    ) -> None:
        url, url_prefix = split_prefix(url)
        self.prefix = prefix if prefix is not None else url_prefix
        # The pool only configures the connections (URL, timeouts, connect retries): commands go over
        # one pipelined connection and pub/sub over another. Short retries when connecting: a Redis
        # restart is survived, an outage is reported at once (the relay: 503).
        self._pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=command_timeout,
            socket_connect_timeout=connect_timeout,
            socket_timeout=command_timeout,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
        )
        self._commands = _Commands(self._pool, command_timeout)
        self._shas = {script: hashlib.sha1(script.encode()).hexdigest() for script in (_INCR, _SET_IF_ABSENT, _PUSH)}
        self._pubsub = _PubSub(self._pool, connect_timeout, self._pubsub_lost)
        self._waiting: dict[str, _Waiters] = {}
        self._subscriptions: set[RedisSubscription] = set()
        self._background: set[asyncio.Task[Any]] = set()
        # How long a queue's feeder task stays subscribed after its last waiter left, so that a busy
        # poller's next poll does not pay for a SUBSCRIBE round trip.
        self._linger = linger
        self._closed = False

    def _pubsub_lost(self) -> None:
        for sub in self._subscriptions:
            sub._lost()

    def _check(self) -> None:
        if self._closed:
            raise BrokerClosed("broker is closed")

    async def _call(self, *args: Any) -> Any:
        with _translated():
            return await self._commands.call(*args)

    async def _script(self, script: str, keys: list[str | bytes], *args: Any) -> Any:
        """EVALSHA, and EVAL once Redis says it does not know the script (it restarted)."""
        with _translated():
            try:
                return await self._commands.call("EVALSHA", self._shas[script], len(keys), *keys, *args)
            except NoScriptError:
                return await self._commands.call("EVAL", script, len(keys), *keys, *args)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run ``coro`` outside the caller's cancellation (a put-back must happen even if the caller is
        gone); aclose() waits for it."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _q(self, queue: str) -> str:
        return f"{self.prefix}q:{queue}"

    def _qn(self, queue: str) -> bytes:
        return f"{self.prefix}qn:{queue}".encode()

    def _ch(self, channel: str) -> bytes:
        return f"{self.prefix}ch:{channel}".encode()

    def _k(self, key: str) -> str:
        return f"{self.prefix}k:{key}"

    # Queues -----------------------------------------------------------------------------------
    async def push(self, queue: str, item: bytes) -> int:
        self._check()
        return int(await self._script(_PUSH, [self._q(queue), self._qn(queue)], item, "RPUSH"))

    async def push_front(self, queue: str, item: bytes) -> None:
        self._check()
        await self._put_back(queue, item)

    async def _put_back(self, queue: str, item: bytes) -> None:
        await self._script(_PUSH, [self._q(queue), self._qn(queue)], item, "LPUSH")

    async def _take(self, queue: str) -> bytes | None:
        """LPOP that survives the caller's cancellation: an item popped for a cancelled caller goes back."""
        task: asyncio.Task[bytes | None] = asyncio.get_running_loop().create_task(self._call("LPOP", self._q(queue)))
        self._background.add(task)  # aclose() waits for it
        task.add_done_callback(self._background.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:

            def put_back(t: asyncio.Task[bytes | None]) -> None:
                if not t.cancelled() and t.exception() is None and (item := t.result()) is not None:
                    self._spawn(self._put_back(queue, item))

            task.add_done_callback(put_back)
            raise

    async def pop(self, queue: str, timeout: float) -> bytes | None:
        self._check()
        waiters = self._waiting.get(queue)
        if waiters is None or not waiters.futures:
            item = await self._take(queue)
            if item is not None:
                return item
        if timeout <= 0:
            return None
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        waiters = self._waiting.get(queue)
        if waiters is None:
            waiters = self._waiting[queue] = _Waiters()
        waiters.futures.append(fut)
        if waiters.task is None:
            waiters.task = asyncio.get_running_loop().create_task(self._feed(queue, waiters))
        waiters.wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout)
        except TimeoutError:
            return self._abandon(waiters, fut)
        except asyncio.CancelledError:
            item = self._abandon(waiters, fut)
            if item is not None:
                self._spawn(self._put_back(queue, item))
            raise

    def _abandon(self, waiters: _Waiters, fut: asyncio.Future[bytes]) -> bytes | None:
        """Stop waiting; an item that was handed over in the meantime is returned, not lost."""
        if fut.done():
            return fut.result() if not fut.cancelled() and fut.exception() is None else None
        fut.cancel()
        try:
            waiters.futures.remove(fut)
        except ValueError:
            pass
        if not waiters.futures:
            waiters.wake.set()  # let the feeder notice it has nobody to feed
        return None

    async def _feed(self, queue: str, waiters: _Waiters) -> None:
        """Take items for this process's waiters on ``queue``, oldest waiter first."""
        futures = waiters.futures
        try:
            async with self._listening(self._qn(queue), lambda _msg: waiters.wake.set()):
                while True:
                    waiters.wake.clear()
                    while futures and futures[0].done():
                        futures.popleft()
                    if not futures:
                        try:
                            await asyncio.wait_for(waiters.wake.wait(), self._linger)
                        except TimeoutError:
                            if not futures:
                                break
                        continue
                    item = await self._take(queue)
                    if item is None:
                        await waiters.wake.wait()  # a push, a new waiter, a resubscribe, or the last waiter left
                        continue
                    while futures:
                        fut = futures.popleft()
                        if not fut.done():
                            fut.set_result(item)
                            break
                    else:
                        await self._put_back(queue, item)  # everybody left meanwhile: it is the next one out
        except Exception as exc:
            if not isinstance(exc, BrokerUnavailable | BrokerClosed):
                logger.exception("redis queue feeder failed")
            for fut in futures:
                if not fut.done():
                    fut.set_exception(exc)
            futures.clear()
        finally:
            # Synchronously with the last check above: a pop() arriving now starts a new feeder.
            if self._waiting.get(queue) is waiters:
                del self._waiting[queue]

    async def remove(self, queue: str, item: bytes) -> bool:
        self._check()
        return int(await self._call("LREM", self._q(queue), 1, item)) > 0

    async def length(self, queue: str) -> int:
        self._check()
        return int(await self._call("LLEN", self._q(queue)))

    # Channels ---------------------------------------------------------------------------------
    @asynccontextmanager
    async def _listening(self, channel: bytes, sink: Sink) -> AsyncIterator[None]:
        await self._pubsub.add(channel, sink)
        try:
            yield
        finally:
            if not self._closed:
                # A task of its own, so that a cancelled subscriber still unsubscribes; tracked, so that
                # aclose() finishes it before the loop can close under it (an untracked one was left
                # pending, or never started: "coroutine '_PubSub.discard' was never awaited").
                await asyncio.shield(self._spawn(self._pubsub.discard(channel, sink)))

    async def publish(self, channel: str, message: bytes) -> None:
        self._check()
        await self._call("PUBLISH", self._ch(channel), message)

    @asynccontextmanager
    async def subscribe(self, channel: str) -> AsyncIterator[RedisSubscription]:
        self._check()
        sub = RedisSubscription()
        async with self._listening(self._ch(channel), sub._sink):
            self._subscriptions.add(sub)
            try:
                yield sub
            finally:
                self._subscriptions.discard(sub)

    # Keys -------------------------------------------------------------------------------------
    async def set(self, key: str, value: bytes, ttl: float | None = None, *, nx: bool = False) -> bool:
        self._check()
        args: list[Any] = ["SET", self._k(key), value]
        if ttl is not None:
            args += ["PX", _px(ttl)]
        if nx:
            args.append("NX")
        return await self._call(*args) is not None

    async def get(self, key: str) -> bytes | None:
        self._check()
        value = await self._call("GET", self._k(key))
        return value.encode() if isinstance(value, str) else value

    async def delete(self, key: str) -> bool:
        self._check()
        return int(await self._call("DEL", self._k(key))) > 0

    async def incr(self, key: str, ttl: float | None = None, amount: int = 1) -> int:
        self._check()
        px = max(1, math.ceil(ttl * 1000)) if ttl is not None else 0
        return int(await self._script(_INCR, [self._k(key)], px, amount))

    async def swap(self, key: str, value: bytes, ttl: float | None = None) -> bytes | None:
        self._check()
        args: list[Any] = ["SET", self._k(key), value]
        if ttl is not None:
            args += ["PX", _px(ttl)]
        old = await self._call(*args, "GET")
        if isinstance(old, str):
            return old.encode()
        return old if isinstance(old, bytes) else None

    async def getdel(self, key: str) -> bytes | None:
        self._check()
        value = await self._call("GETDEL", self._k(key))
        return value.encode() if isinstance(value, str) else value

    async def set_if_absent(
        self, key: str, value: bytes, ttl: float | None, also: tuple[str, bytes, float | None]
    ) -> bool:
        self._check()
        also_key, also_value, also_ttl = also
        keys: list[str | bytes] = [self._k(key), self._k(also_key)]
        args = [value, _px(ttl) or 0, also_value, _px(also_ttl) or 0]
        return bool(await self._script(_SET_IF_ABSENT, keys, *args))

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        feeders = [w.task for w in self._waiting.values() if w.task is not None]
        for waiters in self._waiting.values():
            for fut in waiters.futures:
                if not fut.done():
                    fut.set_exception(BrokerClosed("broker is closed"))
            waiters.futures.clear()
            waiters.wake.set()
        for task in feeders:
            task.cancel()
        await asyncio.gather(*feeders, return_exceptions=True)
        # Put-backs of items taken for cancelled consumers must reach Redis before we hang up.
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for sub in self._subscriptions:
            sub._close()
        await self._pubsub.aclose()
        await self._commands.aclose()
        await self._pool.disconnect()
