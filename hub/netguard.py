"""SSRF guard for callbacks and topic fetches (DESIGN.md "private networks").

A hub makes requests to URLs strangers give it: without this guard anyone could make it POST to
``http://127.0.0.1:6379`` or read ``http://169.254.169.254/`` (cloud metadata). Every address a
host name resolves to must be global; one private address refuses the URL, so a name with both
kinds cannot slip through. Our own public origin and our relay's public URLs (host-based ones are on
other hosts, recognized by the callable the composition root gives) are always allowed.

Known limit: the HTTP client resolves the name again when it connects (DNS rebinding could still
switch addresses in between); a resolver pinned into the transport would close that gap.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable

import anyio
import httpx

from hub.errors import URLRefused
from reversehub.core.outbound import same_origin
from reversehub.core.settings import Settings

CACHE_SECONDS = 300.0
URLS_CACHED = 16_384


def _refused(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class NetGuard:
    """Checks URLs against the policy, caching host verdicts for a few minutes."""

    def __init__(self, settings: Settings, is_own: Callable[[str], bool] | None = None) -> None:
        """``is_own``: whether a URL is one our own relay serves (always allowed); by default any URL
        on our public origin."""
        self.settings = settings
        self.is_own = is_own if is_own is not None else same_origin(settings.public_origin)
        self._cache: dict[str, tuple[bool, float]] = {}
        # URL -> its host: a fan-out checks the same callbacks at every publish, and parsing one with
        # httpx.URL costs about 25 us (measured), a dict lookup nothing. The host is still httpx's.
        self._hosts: dict[str, str] = {}

    async def check(self, url: str) -> None:
        """Raise :class:`URLRefused` unless ``url`` may be requested."""
        if self.is_own(url) or self.settings.allow_private_networks:
            return
        host = self._hosts.get(url)
        if host is None:
            host = self._host(url)
        cached = self._cache.get(host)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            refused = cached[0]
        else:
            refused = await self._resolve_refused(host)
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[host] = (refused, now + CACHE_SECONDS)
        if refused:
            raise URLRefused(f"{host} is on a loopback, private or reserved network")

    def _host(self, url: str) -> str:
        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL as exc:
            raise URLRefused(f"invalid URL: {exc}") from None
        if not host:
            raise URLRefused("URL has no host")
        if len(self._hosts) >= URLS_CACHED:
            self._hosts.clear()
        self._hosts[url] = host
        return host

    async def _resolve_refused(self, host: str) -> bool:
        try:
            return _refused(host)
        except ValueError:
            pass  # a name, not an address literal
        try:
            infos = await anyio.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return True  # unresolvable: nothing to fetch, and no reason to keep trying
        return not infos or any(_refused(str(info[4][0])) for info in infos)
