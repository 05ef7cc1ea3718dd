"""Subscriber policy and caps: pure checks that answer with the reason for a refusal, or None.

The hub and the relay call these where the decision is made (their intake), and map a reason to
the protocol's refusal: WebSub denial (W3C WebSub 5.2: a ``GET`` to the callback with
``hub.mode=denied`` and ``hub.reason``) for a subscription, a 4xx for the rest.

Patterns are shell-style (:func:`fnmatch.fnmatchcase`: ``https://*.example.com/*``), or regular
expressions when prefixed ``re:`` (matched against the whole value). A deny pattern always wins; a
non-empty allow-list admits only what it matches.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from functools import lru_cache

from reversehub.core.settings import Settings


@lru_cache(maxsize=1024)
def _compile(pattern: str) -> re.Pattern[str]:
    if pattern.startswith("re:"):
        return re.compile(pattern[3:])
    return re.compile(fnmatch.translate(pattern))


def matches(patterns: Iterable[str], value: str) -> bool:
    """True if ``value`` matches one of ``patterns`` (fnmatch, or ``re:`` regular expressions)."""
    return any(_compile(p).fullmatch(value) for p in patterns)


def _listed(what: str, value: str, allow: tuple[str, ...], deny: tuple[str, ...]) -> str | None:
    if matches(deny, value):
        return f"{what} not allowed on this hub"
    if allow and not matches(allow, value):
        return f"{what} not allowed on this hub"
    return None


def check_subscription(settings: Settings, topic: str, callback: str) -> str | None:
    """Why a subscription of ``callback`` to ``topic`` is refused (``--allow-/--deny-topic``,
    ``--allow-/--deny-callback``), or None to accept it."""
    return _listed("topic", topic, settings.allow_topic, settings.deny_topic) or _listed(
        "callback", callback, settings.allow_callback, settings.deny_callback
    )


def validate_patterns(patterns: Iterable[str]) -> None:
    """Raise ValueError for a pattern that does not compile (checked once, at start)."""
    for pattern in patterns:
        try:
            _compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad pattern {pattern!r}: {exc}") from None


# Caps: the caller counts (it owns the rows), these decide and word the refusal. 0 means no cap.
def check_registration_cap(settings: Settings, registrations: int) -> str | None:
    """Before creating a relay registration, given how many exist."""
    if settings.max_registrations and registrations >= settings.max_registrations:
        return "too many registrations on this relay"
    return None


def check_registration_share(settings: Settings, registrations: int) -> str | None:
    """Before creating a relay registration, given how many live ones its client created."""
    if settings.max_registrations_per_client and registrations >= settings.max_registrations_per_client:
        return "too many registrations from this client"
    return None


def check_callback_host_cap(settings: Settings, subscriptions: int) -> str | None:
    """Before adding a subscription, given how many active ones its callback's host already has."""
    if settings.max_subscriptions_per_callback_host and subscriptions >= settings.max_subscriptions_per_callback_host:
        return "too many subscriptions for this callback host"
    return None


def check_callback_host_share(settings: Settings, subscriptions: int) -> str | None:
    """Before adding a subscription, given how many active ones on its callback's host its client asked for."""
    share = settings.max_subscriptions_per_callback_host_per_client
    if share and subscriptions >= share:
        return "too many subscriptions for this callback host from this client"
    return None
