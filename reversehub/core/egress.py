"""Where the server may connect: resolve a host once, judge every address, connect to what was judged.

A hub makes requests to URLs strangers give it (callbacks, topics). Unchecked, anyone could make it
POST to ``http://127.0.0.1:6379`` or read ``http://169.254.169.254/`` (cloud metadata) and have what
it read delivered to their own subscription. A check that resolves a name and then lets the client
resolve it again when it connects checks nothing: a name whose answers change (DNS rebinding) passes
the check with a public address and is connected to at the next answer, 127.0.0.1. So the network
side of :mod:`reversehub.core.outbound` (the lean sender and the httpx transport below) asks
:meth:`Egress.addresses` once per connection attempt and connects only to an address it returned;
the Host header and the TLS server name and certificate check stay on the name. No verdict is kept:
a connection kept alive in a pool was judged when it was opened, and the next one is judged again.

Addresses are judged by :func:`refused_address`: anything not globally reachable, multicast, and the
IPv6 forms that carry an IPv4 address (mapped, compatible, translated, NAT64, 6to4) by the IPv4
address they carry, since that is where a packet to them ends up.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager

import anyio
import httpcore
import httpx

__all__ = ["Egress", "EgressTransport", "Lookup", "Refused", "normalize_host", "refused_address", "system_lookup"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The host's addresses for a port, in the resolver's order. Raises OSError when the name has none.
Lookup = Callable[[str, int], Awaitable[Sequence[str]]]


class Refused(Exception):
    """The server may not connect there. The message names the host (never the URL, which may carry a
    token) and why: a refused address, or a name that does not resolve."""


async def system_lookup(host: str, port: int) -> list[str]:
    """The system resolver's addresses for ``host`` (``getaddrinfo``), each once, in its order."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    found: list[str] = []
    for *_, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in found:
            found.append(address)
    return found


# IPv6 ranges whose last 32 bits are an IPv4 address a packet ends up at (RFC 4291 2.5.5, RFC 2765,
# RFC 6052 well-known NAT64 prefix). 6to4 (RFC 3056) carries it in bits 16-48 (``sixtofour``).
_CARRY_IPV4 = (
    ipaddress.IPv6Network("::ffff:0:0/96"),  # IPv4-mapped
    ipaddress.IPv6Network("::/96"),  # IPv4-compatible (deprecated); also :: and ::1
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # IPv4-translated (SIIT)
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix
)
# Refused whatever they carry: local-use NAT64 (RFC 8215) places the IPv4 address where its operator
# chose, Teredo obfuscates it, and 192.0.0.0/24 holds protocol assignments (192.0.0.8: the IPv4 dummy
# address, RFC 7600), none of them a place for a callback or a topic.
_ALWAYS_REFUSED: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b:1::/48"),
    ipaddress.IPv6Network("2001::/32"),
    ipaddress.IPv4Network("192.0.0.0/24"),
)


def refused_address(ip: IPAddress) -> bool:
    """Whether the server must not connect to ``ip`` (unless private networks are allowed)."""
    if any(ip.version == net.version and ip in net for net in _ALWAYS_REFUSED):
        return True
    if isinstance(ip, ipaddress.IPv6Address):
        carried = _carried_ipv4(ip)
        if carried is not None:
            return refused_address(carried)
    return not ip.is_global or ip.is_multicast


def _carried_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in _CARRY_IPV4):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _ipv4_number(part: str) -> int | None:
    """One part of an IPv4 host as the WHATWG URL standard reads it: ``0x`` hex, leading-zero octal,
    or decimal; None when it is not a number."""
    if part[:2].lower() == "0x":
        digits, base = part[2:], 16
        if digits == "":
            return 0
    elif len(part) > 1 and part[0] == "0":
        digits, base = part[1:], 8
    else:
        digits, base = part, 10
    if not digits or not digits.isascii() or not digits.isalnum():
        return None
    try:
        return int(digits, base)
    except ValueError:
        return None


def _whatwg_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``127.1``, ``2130706433``, ``0x7f000001``, ``0177.0.0.1``: the IPv4 address a browser (the WHATWG
    URL standard, and C's ``inet_aton`` that ``getaddrinfo`` uses) reads in a host, or None."""
    parts = host.split(".")
    if parts[-1] == "" and len(parts) > 1:
        parts.pop()
    if not 1 <= len(parts) <= 4:
        return None
    numbers = [_ipv4_number(p) for p in parts]
    if any(n is None for n in numbers):
        return None
    values = [n for n in numbers if n is not None]
    *head, last = values
    if any(n > 255 for n in head) or last >= 256 ** (5 - len(values)):
        return None
    value = last
    for i, n in enumerate(head):
        value += n * 256 ** (3 - i)
    return ipaddress.IPv4Address(value)


def ip_literal(host: str) -> IPAddress | None:
    """The address ``host`` spells (any IPv4 spelling, IPv6 with or without brackets or a zone), or None
    for a name."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return ipaddress.ip_address(bare.split("%", 1)[0])
    except ValueError:
        return _whatwg_ipv4(bare)


def normalize_host(host: str) -> str:
    """One spelling per host, for comparing and counting: lowercase without a trailing dot, an address in
    its canonical form (IPv4-mapped IPv6 as IPv4), and the RFC 6761 ``localhost`` names as 127.0.0.1,
    so that ``localhost``, ``127.1``, ``2130706433`` and ``0x7f000001`` are one host, not four."""
    name = host.lower()
    if name.endswith(".") and not name.startswith("["):
        name = name[:-1]
    if name == "localhost" or name.endswith(".localhost"):
        return "127.0.0.1"
    ip = ip_literal(name)
    if ip is None:
        return name
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class Egress:
    """The addresses the server may connect to for a host. ``allow_private``: judge nothing (still
    resolve once, and connect to what was resolved). ``lookup``: the resolver (the system's)."""

    def __init__(self, *, allow_private: bool = False, lookup: Lookup = system_lookup) -> None:
        self.allow_private = allow_private
        self.lookup = lookup

    async def addresses(self, host: str, port: int) -> list[str]:
        """Resolve ``host`` once and judge every address it has: one refused address refuses the host,
        so a name with both kinds cannot slip through. Raises :class:`Refused`."""
        ip = ip_literal(host)
        if ip is not None:
            if not self.allow_private and refused_address(ip):
                raise Refused(f"{host} is on a loopback, private or reserved network")
            return [str(ip)]
        try:
            found = list(await self.lookup(host, port))
        except (OSError, UnicodeError):
            found = []
        if not found:
            raise Refused(f"{host} does not resolve")
        if not self.allow_private:
            for address in found:
                address_ip = ip_literal(address)
                if address_ip is None or refused_address(address_ip):
                    raise Refused(f"{host} resolves to a loopback, private or reserved address")
        return found


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend, connecting only to addresses :class:`Egress` gave for the host: the
    connection pool, TLS (server name and certificate check on the host) and HTTP stay httpcore's."""

    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        # The lookup counts against the connect timeout: a resolver that never answers is a tarpit too.
        with anyio.move_on_after(timeout) as scope:
            try:
                addresses = await self.egress.addresses(host, port)
            except Refused as exc:
                raise httpcore.ConnectError(str(exc)) from exc
            failure: Exception = httpcore.ConnectError("no address")
            for address in addresses:
                try:
                    return await self.inner.connect_tcp(address, port, None, local_address, socket_options)
                except httpcore.ConnectError as exc:
                    failure = exc  # the next address, as a client trying each resolved address would
            raise failure
        assert scope.cancel_called
        raise httpcore.ConnectTimeout("connect timed out")

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not an outbound destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


# httpcore's errors as httpx's, most specific first (httpx does the same for its own transport).
_ERRORS: tuple[tuple[type[Exception], type[httpx.HTTPError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _as_httpx() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for theirs, ours in _ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc)) from exc
        raise


class _Body(httpx.AsyncByteStream):
    """A response body from httpcore, its errors as httpx's."""

    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self.stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _as_httpx():
            async for part in self.stream:
                yield part

    async def aclose(self) -> None:
        close = getattr(self.stream, "aclose", None)
        if close is not None:
            await close()


class EgressTransport(httpx.AsyncBaseTransport):
    """An httpx transport whose connections go only where :class:`Egress` allows, to the very address
    it judged. Redirects are the client's business (reversehub's never follows them)."""

    def __init__(self, egress: Egress, ssl_context: ssl.SSLContext, limits: httpx.Limits | None = None) -> None:
        # httpx's own defaults for its transport.
        limits = limits if limits is not None else httpx.Limits(max_connections=100, max_keepalive_connections=20)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(egress),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx():
            response = await self._pool.handle_async_request(core)
        assert isinstance(response.stream, AsyncIterable)
        return httpx.Response(
            status_code=response.status,
            headers=response.headers,
            stream=_Body(response.stream),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()
