"""What the owner of a subscription's secret may ask a reversehub hub: ``GET /hub/status`` and
``POST /hub/replay``.

Both need an ownership proof (the hub's ``hub/signing.py``): hex HMAC-SHA256(secret,
"{action}\\n{callback}\\n{topic}\\n{timestamp}", then "\\n{since}" for a replay), with a timestamp
within five minutes of the hub's clock, each proof accepted once. The proof is spelled again here
because ``clients`` imports no server code.
"""

from __future__ import annotations

import email.utils
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import httpx

from clients.errors import OwnershipError, server_hint, unreachable

# Past this difference between our clock and the hub's (its Date header), proofs are timed by the
# hub's clock: the hub accepts a proof within 300 s, and a client whose clock is off by more would
# otherwise be refused every status and replay.
CLOCK_SKEW_TOLERANCE = 60.0


@dataclass(frozen=True)
class Status:
    """A subscription as ``/hub/status`` describes it (the fields the subscriber uses)."""

    state: str
    last_seq: int
    pending: int
    oldest_retained_seq: int | None
    expires_at: float | None


def ownership_proof(secret: str, action: str, callback: str, topic: str, timestamp: int, *params: str) -> str:
    message = "\n".join([action, callback, topic, str(timestamp), *params])
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


class Owner:
    """Status and replay for one subscription, over ``http``."""

    def __init__(self, http: httpx.AsyncClient, hub: str, topic: str, callback: str, secret: str) -> None:
        self.http = http
        self.topic = topic
        self.callback = callback
        self._secret = secret
        self._status_url = urljoin(hub, "hub/status")
        self._replay_url = urljoin(hub, "hub/replay")
        self._skew = 0.0
        self._used: dict[str, int] = {}

    async def status(self) -> Status | None:
        """The subscription's status; None when the hub knows no such subscription for this secret."""
        for _ in range(2):
            skew = self._skew
            try:
                response = await self.http.get(self._status_url, params=self._signed("status"))
            except httpx.HTTPError as exc:
                raise unreachable(self._status_url, exc, server_hint(self._status_url)) from exc
            if not self._refused(response):
                break
            if self._skew == skew:  # not a proof timed by a clock the hub disagrees with
                return None
        else:
            return None
        data: dict[str, Any] = response.json()
        oldest = data.get("oldest_retained_seq")
        expires = data.get("expires_at")
        return Status(
            state=str(data.get("state")),
            last_seq=int(data.get("last_seq") or 0),
            pending=int(data.get("pending") or 0),
            oldest_retained_seq=int(oldest) if oldest is not None else None,
            expires_at=float(expires) if expires is not None else None,
        )

    async def pending(self) -> int:
        """How many deliveries the hub has pending (on their way, or waiting to be retried)."""
        status = await self.status()
        if status is None:
            raise OwnershipError("the hub does not know this subscription (or its secret)", 403)
        return status.pending

    async def replay(self, since: int) -> int:
        """Ask the hub to send again what it kept after ``since``; how many deliveries it queued."""
        for _ in range(2):
            skew = self._skew
            data = {**self._signed("replay", str(since)), "hub.since": str(since)}
            try:
                response = await self.http.post(self._replay_url, data=data)
            except httpx.HTTPError as exc:
                raise unreachable(self._replay_url, exc, server_hint(self._replay_url)) from exc
            if not self._refused(response):
                break
            if self._skew == skew:
                raise OwnershipError("the hub does not know this subscription (or its secret)", 403)
        else:
            raise OwnershipError("the hub refused the replay's proof", 403)
        return int(response.json().get("queued", 0))

    def _signed(self, action: str, *params: str) -> dict[str, str]:
        timestamp = int(time.time() + self._skew)
        # The hub takes a proof once, and a status proof signs nothing but the second: two in the
        # same second would be the same proof, and the second one refused.
        if self._used.get(action, -1) >= timestamp:
            timestamp = self._used[action] + 1
        self._used[action] = timestamp
        proof = ownership_proof(self._secret, action, self.callback, self.topic, timestamp, *params)
        return {
            "hub.callback": self.callback,
            "hub.topic": self.topic,
            "hub.timestamp": str(timestamp),
            "hub.signature": proof,
        }

    def _refused(self, response: httpx.Response) -> bool:
        """True for 403 (not proved); raises OwnershipError for any other failure."""
        self._learn_clock(response)
        if response.status_code == 403:
            return True
        if response.status_code >= 300:
            reason = response.text.strip()[:200]
            raise OwnershipError(f"hub answered HTTP {response.status_code} {reason}".rstrip(), response.status_code)
        return False

    def _learn_clock(self, response: httpx.Response) -> None:
        date = response.headers.get("date")
        if not date:
            return
        try:
            server = email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return
        skew = server - time.time()
        self._skew = skew if abs(skew) > CLOCK_SKEW_TOLERANCE else 0.0
