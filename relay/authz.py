"""Who may register which name: called by the gateway's handler.

ReverseHttp leaves who may enrol to the gateway's operator:

- ``--registration-token T``: ``POST /reversehttp`` needs plain HTTP authentication,
  ``Authorization: Bearer T`` or Basic with T as the password (any user name, so
  ``https://user:T@relay/reversehttp`` works with any client); else 401 with ``WWW-Authenticate``.
- ``--reserve-name PATTERN=T``: a name matching PATTERN may be claimed only with the registration's
  own ReverseHttp ``token`` T (403 ``name reserved``), so its owner keeps it across lease expiries.

The name checked is the name the gateway registers, from its one reading of the form. Who may see
the list of names (``GET /reversehttp``) is the admin side's business: with ``--admin-token`` the
list is served only there, behind the dashboard's guard (reversehub.server.dashboard).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from relay.errors import NameReserved, Unauthorized
from reversehub.core.policy import matches
from reversehub.core.settings import Settings
from reversehub.core.tokens import BASIC_CHALLENGE, presented_token, split_pair, token_matches

__all__ = ["authorize_name", "authorize_registrar"]


@functools.lru_cache(maxsize=16)
def _reserved(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(split_pair(pair) for pair in pairs)


def authorize_registrar(settings: Settings, headers: Mapping[str, str]) -> None:
    """Return if the client may register at all; :class:`Unauthorized` without the registration token."""
    if settings.registration_token is None:
        return
    if not token_matches(presented_token(headers), settings.registration_token):
        raise Unauthorized("registration token required", BASIC_CHALLENGE)


def authorize_name(settings: Settings, name: str | None, token: str | None) -> None:
    """Return if ``name`` may be registered with ReverseHttp ``token``; :class:`NameReserved` if not."""
    if not settings.reserve_name:
        return
    name = (name or "").lower()  # names are DNS labels: compared as the registry stores them
    for pattern, digest in _reserved(settings.reserve_name):
        if matches([pattern], name) and not token_matches(token, digest):
            raise NameReserved("name reserved")
