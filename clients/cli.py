"""Client commands of the ``reversehub`` CLI: subscribe, publish, ping, expose.

``reversehub/cli.py`` adds every command in :data:`commands` to its group.

SIGTERM (service managers, ``timeout``, ``docker stop``) and SIGHUP (a closed terminal) end
``subscribe`` and ``expose`` as Ctrl-C does, with exit code 0: without ``--state`` the subscription
ends and the relay name is released, so the same name can be claimed again at once; ``subscribe
--state`` detaches and keeps both (docs/subscribers.md, "Signals").
"""

from __future__ import annotations

import base64
import contextlib
import json
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal
from urllib.parse import urlsplit

import click
import httpx

from clients.endpoint import LONG_POLL, MIXED, PTTH, Endpoint
from clients.errors import ClientError, DiscoveryError
from clients.publisher import Publisher
from clients.subscriber import Subscriber
from clients.update import Update
from relay.wire import HttpRequest, HttpResponse

DEFAULT_HUB = "http://127.0.0.1:8000/hub"
DEFAULT_RELAY = "http://127.0.0.1:8000/reversehttp"
# Hop-by-hop headers (RFC 9110 7.6.1) are not forwarded by a proxy.
# A mailbox name is kept while its application is away: ask for the longest lease (the relay clamps it).
MAILBOX_LEASE = 7 * 24 * 3600
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


# Signals that end a long-running command the way Ctrl-C does.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


# How each transport is announced on stderr when it is taken into use.
TRANSPORT_LINES = {PTTH: "serving over PTTH", LONG_POLL: "long-polling", MIXED: "serving over PTTH and long-polling"}


def _state(state: str) -> None:
    click.echo(f"[{TRANSPORT_LINES.get(state, state)}]", err=True)


TRANSPORT_OPTION = click.option(
    "--transport",
    type=click.Choice(["auto", "ptth", "long-poll"]),
    envvar="REVERSEHUB_TRANSPORT",
    default="auto",
    show_default=True,
    help="How to receive from the relay: PTTH where it offers it (auto), PTTH only, or long-polling.",
)


@contextlib.contextmanager
def _stopping_on_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` on SIGTERM or SIGHUP (whose default is to die at once, leaving the relay name
    held for its whole lease and, without --state, a subscription queueing to nobody)."""
    previous = {sig: signal.signal(sig, lambda signum, frame: stop()) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def update_as_json(update: Update) -> dict[str, Any]:
    record: dict[str, Any] = {
        "topic": update.topic,
        "seq": update.seq,
        "id": update.id,
        "content_type": update.content_type,
    }
    try:
        record["body"] = update.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(update.body).decode("ascii")
    if update.is_feed:
        record["entries"] = [
            {"id": e.get("id"), "title": e.get("title"), "link": e.get("link")} for e in update.entries
        ]
    return record


def update_as_text(update: Update) -> str:
    head = f"--- {update.topic} ({update.content_type or 'no content type'}, {len(update.body)} bytes)"
    if update.is_feed and update.entries:
        lines = [f"* {e.get('title', '(untitled)')}  {e.get('link', '')}".rstrip() for e in update.entries]
        return "\n".join([head, *lines])
    return f"{head}\n{update.text.rstrip(chr(10))}"


@click.command()
@click.argument("topic")
@click.option("--hub", envvar="REVERSEHUB_HUB", default=None, help="Hub URL [default: discovered from the topic].")
@click.option("--relay", envvar="REVERSEHUB_RELAY", default=None, help="Relay URL [default: the hub's server].")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--lease-seconds", type=int, default=None, help="Lease to ask the hub for.")
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Resume from (and keep) this state file: updates published while stopped are not lost.",
)
@click.option("--unsubscribe", "end", is_flag=True, help="End the subscription kept in --state, then exit.")
@TRANSPORT_OPTION
def subscribe(
    topic: str,
    hub: str | None,
    relay: str | None,
    as_json: bool,
    lease_seconds: int | None,
    state_path: str | None,
    end: bool,
    transport: Literal["auto", "ptth", "long-poll"],
) -> None:
    """Print each update to TOPIC as it arrives (connection state goes to stderr)."""
    if end and state_path is None:
        raise click.UsageError("--unsubscribe ends the subscription kept in --state FILE")
    lock = threading.Lock()

    def show(update: Update) -> None:
        text = json.dumps(update_as_json(update)) if as_json else update_as_text(update)
        with lock:
            click.echo(text)

    def missed(first: int, last: int | None) -> None:
        if last is not None:
            text = f"missed updates {first}..{last} of {topic}: the hub no longer holds them"
        else:
            text = f"missed updates of {topic} from {first} on: the hub cannot say how many"
        with lock:
            if as_json:
                click.echo(json.dumps({"missed": [first, last], "topic": topic}))
            click.echo(text, err=True)

    stop = threading.Event()
    subscriber = Subscriber(
        topic,
        show,
        hub=hub,
        relay=relay,
        lease_seconds=lease_seconds,
        on_state=_state,
        state=state_path,
        on_gap=missed,
        transport=transport,
    )
    if end:
        try:
            subscriber.unsubscribe()  # updates still pending may be printed first
        except (ClientError, httpx.HTTPError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"unsubscribed from {subscriber.topic}; {state_path} deleted", err=True)
        return
    with _stopping_on_signals(stop.set):
        try:
            subscriber.start()
        except DiscoveryError as exc:
            raise click.ClickException(f"{exc}; pass --hub URL") from exc
        except (ClientError, httpx.HTTPError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"subscribed to {subscriber.topic} at {subscriber.hub}", err=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            subscriber.stop()


def _read_data(data: str | None) -> bytes:
    if data is None or data == "-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            with open(data[1:], "rb") as f:
                return f.read()
        except OSError as exc:
            raise click.ClickException(f"--data {data}: cannot read {data[1:]}: {exc.strerror or exc}") from None
    return data.encode()


@click.command()
@click.argument("topic")
@click.option("--data", "-d", default=None, help="Body: TEXT, @FILE or - for stdin [default: stdin].")
@click.option("--content-type", "-t", default="text/plain; charset=utf-8", show_default=True)
@click.option("--hub", envvar="REVERSEHUB_HUB", default=DEFAULT_HUB, show_default=True, help="Hub URL.")
def publish(topic: str, data: str | None, content_type: str, hub: str) -> None:
    """Distribute a body to the subscribers of TOPIC (a fat ping)."""
    body = _read_data(data)
    try:
        with Publisher(hub) as publisher:
            queued = publisher.publish(topic, body, content_type)
    except (ClientError, httpx.HTTPError) as exc:
        raise click.ClickException(str(exc)) from exc
    if queued == 0:
        # Not an error (a topic may have no subscribers yet), but a typo'd topic looks just like this.
        click.echo(f"published {len(body)} bytes to {topic}, but nobody subscribes to it: 0 deliveries", err=True)
    elif queued is not None:
        click.echo(f"published {len(body)} bytes to {topic}: queued for {_subscriptions(queued)}", err=True)
    else:
        click.echo(f"published {len(body)} bytes to {topic}", err=True)


def _subscriptions(n: int) -> str:
    return f"{n} subscription" + ("" if n == 1 else "s")


@click.command()
@click.argument("url")
@click.option("--hub", envvar="REVERSEHUB_HUB", default=None, help="Hub URL [default: discovered from URL].")
def ping(url: str, hub: str | None) -> None:
    """Tell the hub that the feed at URL changed (it fetches it and distributes new entries)."""
    try:
        with Publisher(hub) as publisher:
            publisher.ping(url)
    except DiscoveryError as exc:
        raise click.ClickException(f"{exc}; pass --hub URL") from exc
    except (ClientError, httpx.HTTPError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"pinged the hub about {url}: queued for fetch", err=True)


class Forwarder:
    """Forwards each relayed request to a local server, like a reverse proxy, and logs one line."""

    def __init__(self, to: str, endpoint: Endpoint | None = None) -> None:
        self.to = to.rstrip("/")
        self.endpoint = endpoint
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0), follow_redirects=False)

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.monotonic()
        path, _, query = request.target.partition("?")
        if path.startswith(("http://", "https://")):
            path = urlsplit(path).path
        assert self.endpoint is not None and self.endpoint.public_url is not None
        prefix = urlsplit(self.endpoint.public_url).path.rstrip("/")
        if prefix and path.startswith(prefix):
            path = path[len(prefix) :]
        local = self.to + (path if path.startswith("/") else "/" + path) + (f"?{query}" if query else "")
        headers = [(k, v) for k, v in request.headers if k.lower() not in HOP_BY_HOP | {"host", "content-length"}]
        try:
            answer = await self.http.request(request.method, local, headers=headers, content=request.body)
        except httpx.HTTPError as exc:
            click.echo(f"{request.method} {path or '/'} -> 502 ({type(exc).__name__})")
            return HttpResponse(502, [("content-type", "text/plain")], b"local server unreachable\n")
        elapsed = (time.monotonic() - started) * 1000
        click.echo(f"{request.method} {path or '/'} -> {answer.status_code} ({elapsed:.0f} ms)")
        drop = HOP_BY_HOP | {"content-length", "content-encoding"}
        headers = [(k, v) for k, v in answer.headers.multi_items() if k.lower() not in drop]
        return HttpResponse(answer.status_code, headers, answer.content)


def local_url(to: str) -> str:
    """``--to`` as a URL: a bare port (``3000``, ``:3000``) is on 127.0.0.1, ``host:port`` gets
    ``http://``, and an ``http(s)://`` URL stays as it is. ValueError for anything else."""
    text = to.strip()
    if text.startswith(":"):
        text = "127.0.0.1" + text
    if text.isdigit():
        text = "127.0.0.1:" + text
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:  # not a number, or beyond 65535
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ValueError(f"--to {to!r} is not a port, HOST:PORT or http(s):// URL (e.g. 3000, localhost:3000)")
    return text.rstrip("/")


def check_listening(url: str, timeout: float = 3.0) -> None:
    """Connect once to the local server, so that a wrong ``--to`` fails now, not as a 502 later."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        reason = "connection refused" if isinstance(exc, ConnectionRefusedError) else (exc.strerror or str(exc))
        message = f"nothing answers at {url} ({reason}): start the local server first, or fix --to"
        raise click.ClickException(message) from None


@click.command()
@click.argument("name")
@click.option(
    "--to", "to", required=True, help="Local server to forward to: a port (3000), HOST:PORT or an http(s):// URL."
)
@click.option("--relay", envvar="REVERSEHUB_RELAY", default=DEFAULT_RELAY, show_default=True, help="Relay URL.")
@click.option("--token", envvar="REVERSEHUB_TOKEN", default=None, help="Keeps NAME yours across restarts.")
@click.option("--pollers", default=4, show_default=True, help="Concurrent long-polls or PTTH connections.")
@click.option(
    "--mailbox", is_flag=True, help="While this is not running, the relay stores requests (202) for the next start."
)
@TRANSPORT_OPTION
def expose(
    name: str,
    to: str,
    relay: str,
    token: str | None,
    pollers: int,
    mailbox: bool,
    transport: Literal["auto", "ptth", "long-poll"],
) -> None:
    """Make the local server at --to reachable at the relay's public URL for NAME."""
    import asyncio

    if mailbox and token is None:
        raise click.UsageError("--mailbox needs --token: the same token claims NAME and its stored requests again")
    try:
        to = local_url(to)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    check_listening(to)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:  # from the start: a SIGTERM while registering still releases the name
            loop.add_signal_handler(sig, stop.set)
        forwarder = Forwarder(to)
        lease = MAILBOX_LEASE if mailbox else None
        endpoint = Endpoint(
            relay,
            forwarder,
            name=name,
            token=token,
            lease=lease,
            pollers=pollers,
            on_state=_state,
            mailbox=mailbox,
            transport=transport,
        )
        forwarder.endpoint = endpoint
        try:
            public_url = await endpoint.start()
        except (ClientError, httpx.HTTPError) as exc:
            await forwarder.http.aclose()
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{public_url} -> {to}")
        # A capability URL: shown on the owner's terminal only, never where a log could keep it.
        if sys.stderr.isatty():
            click.echo(f"inspect requests: {endpoint.inspector_url}", err=True)
        else:
            click.echo("inspect requests: the link is shown only on a terminal", err=True)
        try:
            await stop.wait()
        finally:
            await endpoint.aclose()
            await forwarder.http.aclose()
            if mailbox:
                click.echo(f"{name} kept: requests are stored until it is exposed again (same --token)", err=True)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


commands: list[click.Command] = [subscribe, publish, ping, expose]
