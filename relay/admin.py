"""What an operator may see and do in the relay: the names with their queues, and deleting a name.

Deleting goes through the relay's own :meth:`relay.service.Relay.delete`, exactly as a ``DELETE``
on the private URL does: polls in flight end with 410 and queued requests are withdrawn. The
capability it takes is minted here, inside the package that issues them.
"""

from __future__ import annotations

import time
from typing import Any

from relay.errors import InvalidInput, NotFound
from relay.queue import queue_key
from relay.registry import normalize_name, private_cap
from relay.service import Relay

__all__ = ["delete_name", "names"]


async def names(relay: Relay, limit: int) -> list[dict[str, Any]]:
    """Registered names: polls held by this process, requests queued, lease and expiry."""
    status = await relay.status()
    now = time.time()
    listed: list[dict[str, Any]] = status["names"]  # type: ignore[assignment]
    return [
        {
            "name": n["name"],
            "pollers": n["pollers_waiting_here"],
            "queued": await relay.broker.length(queue_key(n["name"])),
            "lease_seconds": n["lease"],
            "expires_at": now + n["expires_in"],
        }
        for n in listed[:limit]
    ]


async def delete_name(relay: Relay, name: str) -> bool:
    """Delete the registration of ``name``; False if there is none (or it went meanwhile)."""
    try:
        reg = await relay.lookup(normalize_name(name))
    except InvalidInput:
        return False
    if reg is None:
        return False
    try:
        await relay.delete(private_cap(reg))
    except NotFound:
        return False  # deleted meanwhile
    return True
