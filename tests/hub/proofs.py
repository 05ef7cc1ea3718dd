"""Proofs of subscription ownership for tests (docs/hub.md, "Status and replay").

A proof works once, so a test that asks for a subscription's status again and again (polling until
it is active) needs a new one each time: :func:`fresh_timestamp` gives each call a timestamp no
earlier call used, as near now as it can (the hub accepts any within 5 minutes of its clock).
"""

from __future__ import annotations

import time

from hub.signing import ownership_proof

_used: set[int] = set()


def fresh_timestamp() -> int:
    """A timestamp within a few minutes of now that no earlier proof of this process used."""
    now = int(time.time())
    for age in range(280):
        for ts in (now - age, now + age):
            if ts not in _used:
                _used.add(ts)
                return ts
    raise AssertionError("over 500 proofs within five minutes: poll less often")


def status_params(secret: str, callback: str, topic: str) -> dict[str, str]:
    """The query of a ``GET /hub/status`` with a fresh proof."""
    ts = fresh_timestamp()
    signature = ownership_proof(secret, "status", callback, topic, ts)
    return {"hub.callback": callback, "hub.topic": topic, "hub.timestamp": str(ts), "hub.signature": signature}
