"""Background loops that outlive their own failures.

Every background loop of the hub and the relay (outbox, fetcher, verifier, broker listeners,
sweepers) runs under :func:`supervised`: an exception in it is logged and the loop is started again
after a backoff, instead of ending the task group it runs in and with it the app's lifespan (which
left a process serving requests with no outbox and no verifier). Cancellation passes through: it
is how the app stops them.

What must never happen silently is the opposite: the whole of the app's background work ending
while the app still serves. The app factory watches for that (:func:`essential`) and the server
then exits non-zero, so that its supervisor (``serve --workers``, systemd, Kubernetes) starts a
fresh process rather than leaving a half-dead one answering requests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import anyio

from reversehub.core.backoff import backoff

logger = logging.getLogger(__name__)

RESTART_BASE = 0.5  # seconds before the first restart of a loop that failed
RESTART_MAX = 30.0
# A loop that ran this long before failing starts again at the shortest backoff: the failure is a
# new one, not the same one repeating.
HEALTHY_AFTER = 60.0


async def supervised(
    name: str,
    loop: Callable[[], Awaitable[object]],
    *,
    base: float = RESTART_BASE,
    cap: float = RESTART_MAX,
) -> None:
    """Run ``loop()`` until it returns; when it raises, log it and run it again after a backoff.

    A loop that returns is done (it returns when its owner closes); one that raises is started
    again, and each failure in a row waits longer, up to ``cap`` seconds. Cancellation is never
    caught."""
    failures = 0
    while True:
        started = time.monotonic()
        try:
            await loop()
            return
        except Exception:
            failures = 1 if time.monotonic() - started >= HEALTHY_AFTER else failures + 1
            delay = backoff(failures, base, cap)
            logger.error("%s failed; starting it again in %.1f s", name, delay, exc_info=True)
        await anyio.sleep(delay)


async def essential(
    name: str, work: Callable[[], Awaitable[object]], closing: Callable[[], bool], on_lost: Callable[[str], None]
) -> None:
    """Run ``work()``, which should run until cancelled; if it ends any other way while
    ``closing()`` is false, log it and call ``on_lost(reason)``: the process cannot go on."""
    try:
        await work()
    except Exception:
        if closing():
            return
        logger.critical("%s ended with an error; this process cannot go on", name, exc_info=True)
        on_lost(f"{name} failed")
        return
    if not closing():
        logger.critical("%s ended unexpectedly; this process cannot go on", name)
        on_lost(f"{name} ended")
