"""Client addresses and the networks settings name (``--trusted-networks``, ``--rate-limit-exempt``)."""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence

__all__ = ["Network", "in_networks", "networks", "parse_networks"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(cidrs: Iterable[str]) -> list[Network]:
    """``["10.0.0.0/8", "192.0.2.1"]`` -> networks; a host address is its own /32 (or /128).

    Raises ValueError for what is not an address or network (the CLI turns it into a usage error).
    """
    return [ipaddress.ip_network(c.strip(), strict=False) for c in cidrs if c.strip()]


@functools.lru_cache(maxsize=32)
def networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    """:func:`parse_networks` of a settings tuple, parsed once however many requests ask."""
    return tuple(parse_networks(cidrs))


def in_networks(host: str | None, nets: Sequence[Network]) -> bool:
    """Whether ``host`` (an address as a string; anything else is in no network) is in one of ``nets``."""
    if host is None:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in nets)
