"""Tokens presented over HTTP and checked against the digests the settings keep.

Every token is kept as a SHA-256 digest (:func:`reversehub.core.settings.token_digest`) and compared with
:func:`hmac.compare_digest` on digests, so neither the comparison's timing nor a memory dump reveals it.
The hub (who may publish), the relay (who may register) and the dashboard (who is the admin) all check
tokens this way.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping

from reversehub.core.settings import hash_token

__all__ = ["BASIC_CHALLENGE", "BEARER_CHALLENGE", "presented_token", "split_pair", "token_matches"]

# WWW-Authenticate values (RFC 9110 11.6.1) for a 401: Bearer (RFC 6750) everywhere, and Basic too where
# clients that can only put credentials in the URL (https://user:TOKEN@host/) must get through.
BEARER_CHALLENGE = 'Bearer realm="reversehub"'
BASIC_CHALLENGE = 'Bearer realm="reversehub", Basic realm="reversehub"'


def token_matches(presented: str | None, digest: str | None) -> bool:
    """Constant-time check of a presented token against a stored ``sha256:`` digest.

    What is presented is always hashed, even if it looks like a digest: knowing the digest (from a
    configuration file, say) must not be as good as knowing the token.
    """
    if presented is None or digest is None:
        return False
    return hmac.compare_digest(hash_token(presented), digest)


def presented_token(headers: Mapping[str, str]) -> str | None:
    """The token of ``Authorization: Bearer T`` or the password of ``Authorization: Basic``."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and value:
        return value
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def split_pair(pair: str) -> tuple[str, str]:
    """``"PATTERN=sha256:…"`` (a settings entry such as ``--topic-token``) -> (pattern, digest)."""
    pattern, _, digest = pair.rpartition("=")
    return pattern, digest
