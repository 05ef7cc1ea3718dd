"""Signatures on deliveries and proofs of subscription ownership.

- ``X-Hub-Signature: <alg>=<hex HMAC(secret, body)>`` (W3C WebSub 8), the algorithm configurable
  among sha1/sha256/sha384/sha512 (``Settings.signature_algorithm``).
- Standard Webhooks (standardwebhooks.com): ``webhook-id`` (stable across retries),
  ``webhook-timestamp`` (UNIX seconds of this attempt) and ``webhook-signature:
  v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``, keyed with the subscription's
  ``hub.secret`` as UTF-8 bytes. Without a secret there is nothing to key a MAC with, so
  ``webhook-signature`` is left out (id and timestamp still let a subscriber drop duplicates).
- Ownership proof for ``/hub/status`` and ``/hub/replay``: hex HMAC-SHA256(secret,
  "{action}\\n{callback}\\n{topic}\\n{timestamp}", then "\\n{param}" for each of the action's
  parameters: ``hub.since`` for a replay), accepted within :data:`PROOF_WINDOW` seconds of the
  server's clock, once (:meth:`hub.service.Hub.owned`). The action and its parameters are signed so
  that a status proof, which travels in a URL and so lands in logs, cannot order a replay.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")
PROOF_WINDOW = 300


def hub_signature(secret: str, body: bytes, algorithm: str = "sha256") -> str:
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported signature algorithm {algorithm!r}")
    return f"{algorithm}=" + hmac.new(secret.encode(), body, algorithm).hexdigest()


def webhook_signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def ownership_proof(secret: str, action: str, callback: str, topic: str, timestamp: int, *params: str) -> str:
    """The proof a subscriber sends to ``/hub/{action}`` (``status`` or ``replay``; a replay's one
    parameter is its ``hub.since``)."""
    message = "\n".join([action, callback, topic, str(timestamp), *params])
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def check_ownership(
    secret: str, action: str, callback: str, topic: str, timestamp: int, proof: str, now: float, *params: str
) -> bool:
    """Whether ``proof`` is :func:`ownership_proof` of these values and ``timestamp`` is recent."""
    expected = ownership_proof(secret, action, callback, topic, timestamp, *params)
    # compare_digest refuses str with characters outside ASCII: compare bytes, which it always takes.
    matches = hmac.compare_digest(expected.encode(), proof.encode("utf-8", "replace"))
    return matches and abs(now - timestamp) <= PROOF_WINDOW
