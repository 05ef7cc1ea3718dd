"""The relay's HTTP edge: parse, call :class:`relay.service.Relay`, map the result or error.

The two hot paths (public URLs and request URLs) are raw ASGI callables: they run once or twice per
relayed request, and a held poll must watch ``receive()`` for ``http.disconnect`` while it waits.
Management endpoints use Starlette requests. Every relay error, and a broker failure, becomes an
HTTP answer in one function, :func:`error_response`.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.types import Receive, Scope, Send

from relay import envelope, ptth
from relay.authz import authorize_name, authorize_registrar
from relay.errors import (
    BodyTooLarge,
    Busy,
    Conflict,
    HeadersTooLarge,
    InvalidInput,
    NotFound,
    RateLimited,
    RelayError,
    Unauthorized,
    Unavailable,
)
from relay.held import Hold
from relay.inspector import describe
from relay.ptth_connection import Response as PtthResponse
from relay.queue import Delivery, Item, new_item_id
from relay.registry import Reg, cap_name, is_label
from relay.service import Park, Relay
from reversehub.core import limits
from reversehub.core.broker import BrokerClosed, BrokerUnavailable
from reversehub.core.connection import ON_LOST, RAW_HEADER_NAMES, OnLost
from reversehub.core.contracts import IN_PROCESS_CLIENT

logger = logging.getLogger(__name__)

# A form is parsed whole before anything looks at it: bound the work one request can ask for.
MAX_FIELDS = 1000
# Hop-by-hop headers (RFC 9110 7.6.1) are the relay's business, not the application's.
_HOP_BY_HOP = frozenset(
    [b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer", b"upgrade"]
)


def _relay(scope: Scope) -> Relay:
    return scope["app"].state.relay  # type: ignore[no-any-return]


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")  # type: ignore[no-any-return]
    return None


async def _send(
    send: Send,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    reason: bytes = b"",
    head: bool = False,
) -> None:
    """One whole response. Header names go with their case, and ``reason`` (the application's reason
    phrase) as an extra key of ``http.response.start``: ``reversehub serve``'s protocol writes both
    as given (reversehub.server.protocol); another ASGI server lowercases the names and writes its
    own phrase. A Content-Length already there is kept (a HEAD's tells the size of the GET's body);
    a reply to a ``head`` request gets none made up (0 would be a wrong size: it tells the GET's)."""
    if status not in (204, 304) and not head:
        for name, _ in headers:
            if name.lower() == b"content-length":
                break
        else:
            headers.append((b"Content-Length", b"%d" % len(body)))
    start: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    if reason:
        start["reason"] = reason
    await send(start)
    await send({"type": "http.response.body", "body": body})


def error_response(
    error: RelayError | BrokerUnavailable | BrokerClosed,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The relay's own answer for ``error``: its status, a one-line plain-text reason, and the headers
    some statuses need (a 401's challenge, a 429's ``Retry-After``). A broker that failed or closed
    is the relay being unavailable (503)."""
    if not isinstance(error, RelayError):
        logger.warning("relay broker error", exc_info=error)
        error = Unavailable()
    headers = [(b"content-type", b"text/plain; charset=utf-8")]
    if isinstance(error, Unauthorized):
        headers.append((b"www-authenticate", error.challenge.encode("latin-1")))
    elif isinstance(error, (RateLimited, Busy)):
        headers.append((b"retry-after", b"%d" % error.retry_after))
    return error.status, headers, error.reason.encode() + b"\n"


async def _send_error(send: Send, error: RelayError | BrokerUnavailable | BrokerClosed) -> None:
    await _send(send, *error_response(error))


def _declared_length(scope: Scope) -> int | None:
    """The request's ``Content-Length``; None when it has none (chunked) or none we can read, and then
    the read loop bounds the body as it arrives. A number too long to be real counts as huge."""
    raw = _header(scope, b"content-length")
    if raw is None:
        return None
    raw = raw.strip()
    if not raw.isascii() or not raw.isdigit():  # "²".isdigit() is True
        return None
    return int(raw) if len(raw) <= 18 else 1 << 62


async def _read_chunks(
    receive: Receive, limit: int, hold: Hold | None = None, base: int = 0
) -> tuple[list[bytes], int]:
    """The body's chunks and their total size; over ``limit``, BodyTooLarge. ``hold`` grows to
    ``base`` + what has arrived where that is more than it holds (a chunked body), so a bound on held
    bytes refuses it (Busy) as soon as it is passed, not once the whole body is in memory."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise InvalidInput("client disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"body larger than {limit} bytes")
            if hold is not None and base + size > hold.size:
                hold.grow_to(base + size)
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks, size


async def _read_body(receive: Receive, limit: int, hold: Hold | None = None) -> bytes:
    chunks, _ = await _read_chunks(receive, limit, hold)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _client(scope: Scope) -> str:
    client = scope.get("client")
    if not client:
        raise InvalidInput("requesting client address unknown")
    return _peer(client)


def _peer(client: tuple[str, int]) -> str:
    host, port = client
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


IN_PROCESS_PEER = _peer(IN_PROCESS_CLIENT)  # the requesting client of requests made in this process


# Public URLs ------------------------------------------------------------------------------------
def _request_line(scope: Scope) -> bytes:
    """The requester's request line: method, request-URI and version as received."""
    target = scope.get("raw_path") or scope["path"].encode("utf-8")
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    return b"%s %s HTTP/%s" % (scope["method"].encode("ascii"), target, scope["http_version"].encode("ascii"))


def _head(
    first: bytes, headers: list[tuple[bytes, bytes]], max_count: int, max_size: int
) -> tuple[list[bytes], bool, int]:
    """The lines of a message/http head (``first`` then the headers as received), whether it has a
    Content-Length, and its size in bytes; HeadersTooLarge past the limits."""
    if len(headers) > max_count:
        raise HeadersTooLarge(f"more than {max_count} request headers")
    lines = [first]
    has_length = False
    size = 0
    for key, value in headers:
        size += len(key) + len(value) + 4
        lower = key.lower()
        if lower == b"transfer-encoding":
            continue  # the server de-chunked the body; it goes with a Content-Length instead
        if lower == b"content-length":
            has_length = True
        lines.append(key + b": " + value)
    if size > max_size:
        raise HeadersTooLarge(f"request headers larger than {max_size} bytes")
    return lines, has_length, size + len(first) + 4


def _as_sent(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The request's headers with their names as the requester wrote them, where the server kept
    them (reversehub.core.connection.RAW_HEADER_NAMES); else as ASGI has them, lowercased."""
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    names: list[bytes] | None = scope.get(RAW_HEADER_NAMES)
    if names is None or len(names) != len(headers):
        return headers
    return [(name, value) for name, (_, value) in zip(names, headers, strict=True)]


def _packed(lines: list[bytes], has_length: bool, chunks: list[bytes], size: int) -> bytes:
    """The packed item (queue.Item): the head's lines and the body's chunks joined once, so the
    body is never held twice while its requester waits."""
    if size and not has_length:
        lines.append(b"Content-Length: %d" % size)
    lines += [b"", b""]
    return b"".join([b"\r\n".join(lines), *chunks])


def _unpack_reply(raw: bytes, method: str = "GET") -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes]:
    """A response the relay serialized itself (validated, Content-Length framed) -> its status, its
    headers (names as the application wrote them), its body and its reason phrase. The Content-Length
    of a reply to a HEAD is kept: it tells the size a GET would have got (RFC 9110 8.6)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = []
    for line in lines[1:]:
        key, _, value = line.partition(b": ")
        lower = key.lower()
        if lower in _HOP_BY_HOP or (lower == b"content-length" and method != "HEAD"):
            continue
        headers.append((key, value))
    return int(lines[0][9:12]), headers, body, lines[0][13:]


def _parsed_reply(response: PtthResponse) -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes]:
    """What :func:`_unpack_reply` gives for ``response.serialized()``, from the parsed response."""
    headers = [(key, value) for key, value in response.headers if key.lower() not in _HOP_BY_HOP]
    return response.status, headers, response.body, response.reason


async def public(scope: Scope, receive: Receive, send: Send) -> None:
    """Any request to a public URL (relay.routes): queue it for the application and relay its reply.

    Its bytes are held (:mod:`relay.held`) from before its body is read until its requester stops
    waiting: a body over the limit is 413 and one past a bound on held bytes 503, both unread.
    """
    relay = _relay(scope)
    settings = relay.settings
    name = scope["path_params"]["name"].lower()
    hold = relay.held.hold(name)

    async def item() -> tuple[str, bytes]:
        item_id = new_item_id()
        first = Item.packed_head(item_id, _client(scope)) + _request_line(scope)
        lines, has_length, head_size = _head(
            first, _as_sent(scope), settings.max_header_count, settings.max_header_size
        )
        declared = _declared_length(scope)
        if declared is not None and declared > relay.body_limit:
            raise BodyTooLarge(f"body larger than {relay.body_limit} bytes")
        hold.grow_to(head_size + (declared or 0))
        chunks, size = await _read_chunks(receive, relay.body_limit, hold, head_size)
        return item_id, _packed(lines, has_length, chunks, size)

    try:
        status, headers, body, reason = await _forward(relay, name, scope["method"], item, scope.get(ON_LOST))
    finally:
        hold.release()
    if status != REQUESTER_GONE:
        await _send(send, status, headers, body, reason, head=scope["method"] == "HEAD")


async def post_here(relay: Relay, url: str, headers: dict[str, str], body: bytes) -> int | None:
    """A POST from this process to one of our public URLs (the hub's deliveries to callbacks on our
    own relay): what :func:`public` does with it, without building an HTTP request and an ASGI call
    around it. Returns the reply's status, or None for a URL that is not a public URL (the caller
    then sends it the usual way)."""
    found = relay.urls.addresses(url)
    if found is None:
        return None
    name, target_text = found
    settings = relay.settings
    target = target_text.encode("latin-1")
    fields = [(b"host", urlsplit(url).netloc.encode("latin-1")), (b"content-length", b"%d" % len(body))]
    fields += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    hold = relay.held.hold(name)

    async def item() -> tuple[str, bytes]:
        item_id = new_item_id()
        first = Item.packed_head(item_id, IN_PROCESS_PEER) + b"POST %s HTTP/1.1" % target
        lines, has_length, head_size = _head(first, fields, settings.max_header_count, settings.max_header_size)
        if len(body) > relay.body_limit:
            raise BodyTooLarge(f"body larger than {relay.body_limit} bytes")
        hold.grow_to(head_size + len(body))
        return item_id, _packed(lines, has_length, [body], len(body))

    try:
        status, *_ = await _forward(relay, name, "POST", item)
    finally:
        hold.release()
    return status


REQUESTER_GONE = 499  # nginx's "client closed request", for the log: nobody is left to send it to


class _RequesterGone(Exception):
    """The requester's connection was lost while it waited: nobody is left to answer."""


async def _relay_while_connected(
    relay: Relay, name: str, item_id: str, raw: bytes, on_lost: OnLost
) -> bytes | PtthResponse:
    """:meth:`Relay.relay`, ended at once when the requester's connection is lost: its request
    leaves the queue and its bytes are given back then, not after the reply timeout."""
    task = asyncio.current_task()
    lost = False

    def cancel() -> None:
        nonlocal lost
        lost = True
        if task is not None:
            task.cancel()

    on_lost.watch(cancel)
    try:
        return await relay.relay(name, item_id, raw)
    except asyncio.CancelledError:
        if not lost or task is None:
            raise  # not ours: the server is cancelling this request
        task.uncancel()
        raise _RequesterGone() from None
    finally:
        on_lost.callback = None  # the only request waiting on this connection was this one


async def _live(relay: Relay, name: str, item_id: str, raw: bytes, on_lost: OnLost | None) -> bytes | PtthResponse:
    if on_lost is None:
        return await relay.relay(name, item_id, raw)
    return await _relay_while_connected(relay, name, item_id, raw, on_lost)


async def _forward(
    relay: Relay,
    name: str,
    method: str,
    item: Callable[[], Awaitable[tuple[str, bytes]]],
    on_lost: OnLost | None = None,
) -> tuple[int, list[tuple[bytes, bytes]], bytes, bytes]:
    """Relay one request to ``name``'s application: the reply's status, headers, body and reason
    phrase, or the
    relay's own answer (404 no such name, 504 no poller, ...). Counted, timed and logged here.

    ``item()`` reads the request and packs it (:class:`relay.queue.Item`); it is called only once
    the name is known to exist, so a request to no name costs no read of its body.
    """
    start = time.perf_counter()
    status, outcome = 500, "error"
    reg: Reg | None = None
    raw: bytes | None = None
    reply: bytes | PtthResponse | None = None
    try:
        reg = await relay.lookup(name) if is_label(name) else None
        if reg is None:
            raise NotFound("no such registration")
        item_id, raw = await item()
        stored = False
        if reg.mailbox:
            reply, stored = await relay.mail(reg, raw, partial(_live, relay, name, item_id, raw, on_lost))
        elif on_lost is None:
            reply = await relay.relay(name, item_id, raw)
        else:
            reply = await _relay_while_connected(relay, name, item_id, raw, on_lost)
        if isinstance(reply, PtthResponse):  # a PTTH connection of this process answered (relay.ptth)
            status, headers, body, reason = _parsed_reply(reply)
        else:
            status, headers, body, reason = _unpack_reply(reply, method)
        outcome = "stored" if stored else "replied"
        return status, headers, body, reason
    except _RequesterGone:
        status, outcome = REQUESTER_GONE, "RequesterGone"
        return status, [], b"", b""
    except RelayError as exc:
        status, outcome = exc.status, type(exc).__name__
        return (*error_response(exc), b"")
    except (BrokerUnavailable, BrokerClosed) as exc:
        status, outcome = 503, "Unavailable"
        return (*error_response(exc), b"")
    finally:
        elapsed = time.perf_counter() - start
        relay.metrics.count(outcome)
        if outcome == "replied":
            relay.metrics.latency.observe(elapsed)
        if raw is not None and reg is not None:
            relay.inspector.record(
                reg, raw, status, outcome, reply if outcome in ("replied", "stored") else None, elapsed
            )
        # One line per relayed request: no path or query (they may carry secrets), no capability.
        logger.info("relay %s %s -> %d %s %.1fms", name, method, status, outcome, elapsed * 1000)


# Request URLs -----------------------------------------------------------------------------------
async def _watch_disconnect(receive: Receive, park: Park) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            park.end("disconnect")
            return


async def request_url(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET``: poll (held until a request comes); ``POST``: the reply to what this URL delivered."""
    relay = _relay(scope)
    cap = scope["path_params"]["cap"]
    method = scope["method"]
    try:
        if method in ("GET", "POST") and (upgrade := _header(scope, b"upgrade")) is not None:
            taken = await ptth.handshake(relay, cap, scope, receive, upgrade, _header(scope, b"alpn"))
            if taken:
                return
            if taken is False:
                method = "GET"  # a PTTH offer this server cannot take: a poll (relay.ptth.handshake)
        if method == "POST":
            await _reply(relay, cap, scope, receive)
            await _send(send, 202, [(b"content-type", b"text/plain")], b"accepted\n")
        elif method == "GET":
            await _poll(relay, cap, scope, receive, send)
        else:
            await _send(send, 405, [(b"allow", b"GET, POST"), (b"content-type", b"text/plain")], b"use GET or POST\n")
    except (RelayError, BrokerUnavailable, BrokerClosed) as exc:
        await _send_error(send, exc)


async def _reply(relay: Relay, cap: str, scope: Scope, receive: Receive) -> None:
    """A reply POSTed to a request URL. The delivery it answers is claimed before its body is read:
    a made-up or already answered URL is 404 and a body over the limit 413, both unread (and the
    requesters of a too large reply get 502). The reply's bytes are held under its name while it is
    read and relayed; a reply that cannot be held now (503) or whose poller went away mid-body leaves
    the delivery bound, so it may be posted again."""
    delivery = await relay.claim(cap)
    hold = relay.held.hold(cap_name(cap, private=False) or "")
    try:
        try:
            declared = _declared_length(scope)
            if declared is not None and declared > relay.reply_limit:
                raise BodyTooLarge(f"reply larger than {relay.reply_limit} bytes")
            hold.grow_to(declared or 0)
            body = await _read_body(receive, relay.reply_limit, hold)
        except BodyTooLarge:
            await relay.refuse(delivery)
            raise
        except RelayError:
            await relay.unclaim(cap, delivery)
            raise
        await relay.reply(cap, delivery, body, _header(scope, b"content-type"))
    finally:
        hold.release()


async def _poll_watching(relay: Relay, cap: str, kind: str, park: Park, receive: Receive) -> Delivery | None:
    """The poll under a server that says a connection is lost only through ``receive()``: once the
    poll has to wait, a task watches for ``http.disconnect``."""
    watcher: asyncio.Task[None] | None = None

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.get_running_loop().create_task(_watch_disconnect(receive, park))

    try:
        return await relay.poll(cap, kind, park, watch)
    finally:
        if watcher is not None:
            watcher.cancel()


async def _poll(relay: Relay, cap: str, scope: Scope, receive: Receive, send: Send) -> None:
    kind = envelope.choose(_header(scope, b"accept"))
    park = Park()
    on_lost: OnLost | None = scope.get(ON_LOST)
    if on_lost is not None:
        # ``reversehub serve``'s protocol says when the connection is lost (reversehub.core.connection).
        try:
            delivery = await relay.poll(cap, kind, park, partial(on_lost.watch, park.disconnected))
        finally:
            on_lost.callback = None  # the only request waiting on this connection was this one
    else:
        delivery = await _poll_watching(relay, cap, kind, park, receive)
    # Names as the spec writes them: the original Java client looks ``Link`` up case-sensitively.
    headers = [(b"Cache-Control", b"no-store")]
    if delivery is None:
        # The same URL stays usable: the original clients poll it again after a 204.
        headers.append((b"Link", b'<%s>; rel="next"' % relay.request_url(cap).encode()))
        await _send(send, 204, headers)
        return
    if park.reason == "disconnect":
        await relay.undeliver(cap, delivery)
        return
    items = delivery.items
    if delivery.content_type == envelope.JSON:
        body = envelope.request_json(items[0].message)
    else:
        body = items[0].message if len(items) == 1 else b"".join(i.message for i in items)
    headers += [
        (b"Content-Type", delivery.content_type.encode()),
        (b"Link", b'<%s>; rel="next"' % relay.request_url(delivery.next_cap).encode()),
        (b"Requesting-Client", ", ".join(i.client for i in items).encode("latin-1")),
    ]
    await _send(send, 200, headers, body)


# Gateway and private URLs -----------------------------------------------------------------------
Endpoint = Callable[[Request], Awaitable[Response]]


def _mapped(endpoint: Endpoint) -> Endpoint:
    """Relay errors become short plain-text responses with their status (:func:`error_response`), never a 500."""

    async def wrapper(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (RelayError, BrokerUnavailable, BrokerClosed) as exc:
            status, headers, body = error_response(exc)
            return Response(body, status_code=status, headers={k.decode(): v.decode("latin-1") for k, v in headers})

    wrapper.__name__ = endpoint.__name__
    return wrapper


async def _form(request: Request, limit: int) -> dict[str, str]:
    """The body read as a form, whatever its Content-Type; the last of repeated fields counts."""
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"form body larger than {limit} bytes")
    try:
        fields = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise InvalidInput("body must be application/x-www-form-urlencoded") from None
    except ValueError:
        raise InvalidInput(f"form with more than {MAX_FIELDS} fields") from None
    return dict(fields)


async def _count_name(relay: Relay, request: Request, name: str | None) -> None:
    """Count a registration against its name's budget (``registration:name``); :class:`RateLimited` when over.

    The client's own budget was counted by the server's middleware, from the path alone.
    """
    budgets = relay.services.limits
    if not name or not budgets.applies(request.scope.get("client")):
        return
    client = budgets.client(request.scope.get("client"))
    retry_after = await budgets.hit_names("registration:name", [f"name={name.lower()}"], client)
    if retry_after is not None:
        raise RateLimited(limits.reason("registration:name"), retry_after)


def _share_holder(relay: Relay, request: Request) -> str | None:
    """Who a new registration counts against (``--max-registrations-per-client``); None when exempt."""
    client = request.scope.get("client")
    if relay.services.limits.exempt(client):
        return None
    return limits.client_key(str(client[0]) if client else None)[:64]


def _link_response(relay: Relay, reg: Reg, status: int) -> Response:
    response = Response(status_code=status)
    # Raw, not through ``response.headers``, which lowercases: ``Link`` and ``Location`` as the spec
    # writes them, for clients that look them up case-sensitively.
    response.raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in relay.links(reg)]
    return response


@_mapped
async def gateway(request: Request) -> Response:
    """The gateway: ``POST`` registers (201 new, 204 refreshed); ``GET`` shows the gateway's state.

    Authorized here (:mod:`relay.authz`): the registration token before the body is read, the name
    on the form as it is registered; then the name's budget is counted, so a client refused a
    reserved name does not spend its owner's budget.
    """
    relay: Relay = request.app.state.relay
    settings = relay.settings
    if request.method == "POST":
        authorize_registrar(settings, request.headers)
        form = await _form(request, settings.max_form_size)
        name, token = form.get("name"), form.get("token")
        authorize_name(settings, name, token)
        mailbox = _flag(form.get("mailbox", request.query_params.get("mailbox")), "mailbox")
        await _count_name(relay, request, name)
        reg, created = await relay.register(name, token, form.get("lease"), _share_holder(relay, request), mailbox)
        return _link_response(relay, reg, 201 if created else 204)
    state = await relay.status()
    if "json" in request.headers.get("accept", ""):
        return JSONResponse(state)
    rows = "".join(
        f"<tr><td><a href='{html.escape(str(n['public_url']))}'>{html.escape(str(n['name']))}</a></td>"
        f"<td>{n['lease']}</td><td>{n['expires_in']}</td><td>{n['pollers_waiting_here']}</td></tr>"
        for n in state["names"]  # type: ignore[attr-defined]
    )
    return HTMLResponse(
        "<!doctype html><title>ReverseHttp gateway</title><h1>ReverseHttp gateway</h1>"
        f"<p>{state['registrations']} registrations, {state['pollers_waiting_here']} polls waiting here.</p>"
        "<table><tr><th>name</th><th>lease (s)</th><th>expires in (s)</th><th>polls waiting here</th></tr>"
        f"{rows}</table>"
    )


def _flag(raw: str | None, field: str) -> bool | None:
    """A boolean form field: ``1``/``true``/``yes`` or ``0``/``false``/``no``; None when absent."""
    if raw is None:
        return None
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"{field} must be 1 or 0")


def _describe(relay: Relay, reg: Reg) -> dict[str, str | int]:
    doc: dict[str, str | int] = {
        "name": reg.name,
        "lease": int(reg.lease_seconds),
        "public_url": relay.public_url(reg.name),
        "expires_in": max(0, round(reg.expires_at - time.time())),
    }
    if reg.mailbox:
        doc["mailbox"] = 1
    return doc


@_mapped
async def private(request: Request) -> Response:
    """The private URL: ``GET`` describes, ``PUT`` reconfigures lease/token, ``DELETE`` removes."""
    relay: Relay = request.app.state.relay
    cap = request.path_params["cap"]
    if request.method == "DELETE":
        await relay.delete(cap)
        return Response(status_code=204)
    if request.method == "PUT":
        form = await _form(request, relay.settings.max_form_size)
        reg = await relay.reconfigure(cap, form.get("token"), form.get("lease"))
        return _link_response(relay, reg, 204)
    reg = await relay.registration(cap)
    doc = _describe(relay, reg)
    accept = request.headers.get("accept", "")
    if "application/json" in accept:
        return Response(json.dumps(doc), media_type="application/json")
    if "text/html" in accept:
        items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in doc.items())
        return HTMLResponse(f"<!doctype html><title>{reg.name}</title><h1>Registration {reg.name}</h1><dl>{items}</dl>")
    return Response(urlencode(doc), media_type=envelope.FORM)


# Mailboxes and the inspector --------------------------------------------------------------------
# What an application answered is served on the relay's main host here (a Location, an inspected
# response): a sandbox CSP gives any page in it an opaque origin of its own, so no script in it can
# reach what the main origin holds (the dashboard with host-based names), and nosniff keeps a
# response from being read as something it does not say it is.
_CONTAINED = [(b"content-security-policy", b"sandbox"), (b"x-content-type-options", b"nosniff")]


def _contained(status: int, headers: list[tuple[bytes, bytes]], body: bytes, *extra: tuple[bytes, bytes]) -> Response:
    """An application's response served on the main host: contained as above, and without its
    cookies (they would be the main origin's)."""
    response = Response(body, status_code=status)
    response.raw_headers.extend([*(h for h in headers if h[0].lower() != b"set-cookie"), *_CONTAINED, *extra])
    return response


@_mapped
async def mail(request: Request) -> Response:
    """``GET`` on a mailbox Location (relay.mailbox): 202 while the application has not answered,
    then its stored response; 404 for an unknown or expired one."""
    relay: Relay = request.app.state.relay
    found = await relay.fetch_mail(request.path_params["cap"])
    if found is None:
        raise NotFound("no such stored request (or it has expired)")
    if not found:
        return Response(
            "pending: the application has not answered yet\n",
            status_code=202,
            media_type="text/plain",
            headers={"Retry-After": "5", "Cache-Control": "no-store"},
        )
    status, headers, body, _ = _unpack_reply(found)
    return _contained(status, headers, body, (b"cache-control", b"no-store"))


@_mapped
async def inspect(request: Request) -> Response:
    """``GET {private_url}/requests``: the name's last requests and responses (relay.inspector), newest
    first. The private URL is the owner's capability: whoever holds it sees what was sent to the name."""
    relay: Relay = request.app.state.relay
    cap = request.path_params["cap"]
    reg = await relay.registration(cap)
    rows = await relay.inspector.listing(reg)
    base = relay.inspector_url(reg)
    doc = {"name": reg.name, "requests": [describe(row, f"{base}/{row.id}/replay") for row in rows]}
    if "text/html" in request.headers.get("accept", ""):
        return _inspector_page(reg.name, doc["requests"])  # type: ignore[arg-type]
    return Response(
        json.dumps(doc),
        media_type="application/json",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


def _inspector_page(name: str, entries: list[dict[str, Any]]) -> HTMLResponse:
    """The inspector as a page for a browser: every value escaped, no script, forms only to here."""

    def message(doc: dict[str, Any] | None) -> str:
        if doc is None:
            return "<i>answered by the relay</i>"
        head = "\n".join([doc["line"], *(f"{k}: {v}" for k, v in doc["headers"])])
        body = doc.get("body", "(binary, base64) " + doc.get("body_base64", ""))
        return f"<pre>{html.escape(head)}\n\n{html.escape(body)}</pre>"

    rows = "".join(
        f"<tr><td>{e['id']}</td><td>{html.escape(e['client'])}</td><td>{e['status']} {html.escape(e['outcome'])}</td>"
        f"<td>{message(e['request'])}</td><td>{message(e['response'])}</td><td>"
        + (
            f"<form method=post action='{html.escape(e['replay'])}'><button>replay</button></form>"
            if e["replay"]
            else "cut short"
        )
        + "</td></tr>"
        for e in entries
    )
    return HTMLResponse(
        f"<!doctype html><title>{html.escape(name)}: requests</title><h1>Last requests to {html.escape(name)}</h1>"
        "<table border=1><tr><th>id</th><th>client</th><th>answer</th><th>request</th><th>response</th><th></th></tr>"
        f"{rows}</table>",
        headers={
            "Cache-Control": "no-store",
            "Content-Security-Policy": "default-src 'none'; form-action 'self'",
            "Referrer-Policy": "no-referrer",
        },
    )


@_mapped
async def replay(request: Request) -> Response:
    """``POST {private_url}/requests/{id}/replay``: send a kept request to the name again, as a new
    request (kept in the inspector too); the answer is what a requester would get (for a mailbox
    name whose application is away, 202 with a Location)."""
    relay: Relay = request.app.state.relay
    reg = await relay.registration(request.path_params["cap"])
    # Parsed here, not by an int path convertor: a made-up id of thousands of digits is past
    # Python's int conversion limit, and must be a 404 like any other unknown id.
    raw_id = request.path_params["id"]
    row = None
    if raw_id.isascii() and raw_id.isdigit() and len(raw_id) <= 18:
        row = await relay.inspector.one(reg, int(raw_id))
    if row is None:
        raise NotFound("no such inspected request")
    if row.request_truncated:
        raise Conflict("this request was kept only in part (--inspector-max-body) and cannot be replayed")
    method = row.request.partition(b" ")[0].decode("latin-1")
    hold = relay.held.hold(reg.name)

    async def item() -> tuple[str, bytes]:
        item_id = new_item_id()
        hold.grow_to(len(row.request))
        return item_id, Item.packed_head(item_id, row.client) + row.request

    try:
        status, headers, body, _ = await _forward(relay, reg.name, method, item)
    finally:
        hold.release()
    return _contained(status, headers, body, (b"x-replay-of", str(row.id).encode()))
