"""Exponential backoff with jitter: how long to wait before trying again."""

from __future__ import annotations

import random


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before retry number ``attempt`` (1-based): ``base * 2**(attempt - 1)``, at most ``cap``,
    jittered to 50-100 % of that, so that many clients failing together do not retry together."""
    return min(cap, base * 2.0 ** min(max(attempt, 1) - 1, 62)) * random.uniform(0.5, 1.0)
