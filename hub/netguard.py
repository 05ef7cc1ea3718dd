"""SSRF guard for callbacks and topic fetches (DESIGN.md "private networks").

A hub makes requests to URLs strangers give it: without this guard anyone could make it POST to
``http://127.0.0.1:6379`` or read ``http://169.254.169.254/`` (cloud metadata). The guard that holds
is where the connection is made (:mod:`reversehub.core.egress`): the host is resolved once per
connection attempt, every address it has must be global (one private address refuses it, so a name
with both kinds cannot slip through), and the connection goes to an address that was judged, so a
name whose DNS answers change between two lookups gains nothing.

This module answers earlier, for the hub's own decisions: :meth:`NetGuard.check` refuses a URL whose
host spells a refused address (in any spelling: ``127.1``, ``0x7f000001``, ``[::ffff:7f00:1]``)
without a lookup, cheap enough for every delivery; :meth:`NetGuard.check_resolved` also resolves a
name once, so that a subscription can be denied with the reason (W3C WebSub 5.2). Neither keeps a
verdict about a name. Our own public origin and our relay's public URLs (host-based ones are on other
hosts, recognized by the callable the composition root gives) are always allowed.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from hub.errors import URLRefused
from reversehub.core.egress import Egress, Refused, ip_literal, normalize_host, refused_address
from reversehub.core.outbound import same_origin
from reversehub.core.settings import Settings

URLS_CACHED = 16_384


class NetGuard:
    """Checks URLs against the policy; remembers only each URL's host, never a verdict about a name."""

    def __init__(
        self, settings: Settings, is_own: Callable[[str], bool] | None = None, egress: Egress | None = None
    ) -> None:
        """``is_own``: whether a URL is one our own relay serves (always allowed); by default any URL
        on our public origin. ``egress``: how names are resolved and judged (the system resolver)."""
        self.settings = settings
        self.is_own = is_own if is_own is not None else same_origin(settings.public_origin)
        self.egress = egress if egress is not None else Egress(allow_private=settings.allow_private_networks)
        # URL -> (host as written, port, whether the host spells a refused address): a fan-out checks
        # the same callbacks at every publish, and parsing one costs far more than a dict lookup. What
        # an address literal is does not depend on DNS, so this memo holds no verdict about a name.
        self._hosts: dict[str, tuple[str, int, bool]] = {}

    async def check(self, url: str) -> None:
        """Raise :class:`URLRefused` unless ``url`` may be requested as far as can be told without a
        lookup: a valid URL whose host, if it is an address, is not on a refused network."""
        if self.is_own(url) or self.settings.allow_private_networks:
            return
        host, _, refused = self._parse(url)
        if refused:
            raise URLRefused(f"{host} is on a loopback, private or reserved network")

    async def check_resolved(self, url: str) -> None:
        """:meth:`check`, and a name resolved once now and judged: :class:`URLRefused` says whether it
        does not resolve or resolves to a refused address. The verdict is not kept: the connection
        resolves and judges again."""
        if self.is_own(url) or self.settings.allow_private_networks:
            return
        await self.check(url)
        host, port, _ = self._parse(url)
        try:
            await self.egress.addresses(normalize_host(host), port)
        except Refused as exc:
            raise URLRefused(str(exc)) from None

    def _parse(self, url: str) -> tuple[str, int, bool]:
        known = self._hosts.get(url)
        if known is not None:
            return known
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise URLRefused(f"invalid URL: {exc}") from None
        if not parsed.host:
            raise URLRefused("URL has no host")
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        ip = ip_literal(normalize_host(parsed.host))
        if len(self._hosts) >= URLS_CACHED:
            self._hosts.clear()
        known = self._hosts[url] = (parsed.host, port, ip is not None and refused_address(ip))
        return known
