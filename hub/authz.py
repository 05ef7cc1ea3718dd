"""Who may publish which topic: called by the hub's handlers once they have parsed the request.

- ``--publish-token T``: every publish (``POST /publish``, ``POST /hub`` with ``hub.mode=publish``)
  needs ``Authorization: Bearer T`` or Basic with password T, else 401 with a Bearer challenge.
- ``--topic-token PATTERN=T``: a topic matching PATTERN needs T (or the global publish token). A ping
  naming several topics needs a token good for each of them.
- Without a token guarding a topic, ``hub.url`` pings stay open: the hub fetches the content itself,
  so a ping cannot forge it. A fat ping carries its content, so it is taken only from
  ``--trusted-networks`` (403 from anywhere else).

The decision is made on the request as the hub parsed it (:mod:`hub.publish`), so what is authorized
is exactly what is published: a second reading here could differ from the hub's (the last of
repeated fields, which body is a form) and let a publish through unchecked.
"""

from __future__ import annotations

import functools

from hub.errors import Forbidden, Unauthorized
from hub.publish import FatPing, Ping
from reversehub.core.addresses import in_networks, networks
from reversehub.core.policy import matches
from reversehub.core.settings import Settings
from reversehub.core.tokens import split_pair, token_matches

__all__ = ["authorize_publish"]

TOKEN_REQUIRED = "publish token required"
UNTRUSTED_FAT_PING = "fat pings are accepted only from trusted networks or with a publish token"


@functools.lru_cache(maxsize=16)
def _topic_tokens(pairs: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(split_pair(pair) for pair in pairs)


def authorize_publish(settings: Settings, ping: Ping | FatPing, *, token: str | None, client_host: str | None) -> None:
    """Return if ``ping`` may be published by a client at ``client_host`` presenting ``token``.

    Raises :class:`~hub.errors.Unauthorized` when a token is required and missing or wrong, and
    :class:`~hub.errors.Forbidden` for a fat ping from an untrusted network without any token.
    """
    fat = isinstance(ping, FatPing)
    topic_tokens = _topic_tokens(settings.topic_token)
    if not fat and settings.publish_token is None and not topic_tokens:
        return
    if token_matches(token, settings.publish_token):
        return
    topics = (ping.topic,) if isinstance(ping, FatPing) else ping.urls
    for topic in topics:
        covering = [digest for pattern, digest in topic_tokens if matches([pattern], topic)]
        if covering:
            if not any(token_matches(token, digest) for digest in covering):
                raise Unauthorized(TOKEN_REQUIRED)
        elif settings.publish_token is not None:
            raise Unauthorized(TOKEN_REQUIRED)
        elif fat and not in_networks(client_host, networks(settings.trusted_networks)):
            raise Forbidden(UNTRUSTED_FAT_PING)
