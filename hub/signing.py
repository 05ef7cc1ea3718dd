"""Signatures on deliveries and proofs of subscription ownership.

- ``X-Hub-Signature: <alg>=<hex HMAC(secret, body)>`` (W3C WebSub 8), the algorithm configurable
  among sha1/sha256/sha384/sha512 (``Settings.signature_algorithm``).
- Standard Webhooks (standardwebhooks.com): ``webhook-id`` (stable across retries),
  ``webhook-timestamp`` (UNIX seconds of this attempt) and ``webhook-signature:
  v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``, keyed with the subscription's
  ``hub.secret`` as UTF-8 bytes. Without a secret there is nothing to key a MAC with, so
  ``webhook-signature`` is left out (id and timestamp still let a subscriber drop duplicates).
- Ownership proof for ``/hub/status`` and ``/hub/replay``: hex HMAC-SHA256(secret,
  "{callback}\\n{topic}\\n{timestamp}"), accepted within :data:`PROOF_WINDOW` seconds.
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


def ownership_proof(secret: str, callback: str, topic: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{callback}\n{topic}\n{timestamp}".encode(), hashlib.sha256).hexdigest()


def check_ownership(secret: str, callback: str, topic: str, timestamp: int, proof: str, now: float) -> bool:
    if abs(now - timestamp) > PROOF_WINDOW:
        return False
    return hmac.compare_digest(ownership_proof(secret, callback, topic, timestamp), proof)
