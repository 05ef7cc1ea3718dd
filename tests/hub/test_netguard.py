"""NetGuard's URL -> host memo: the same verdicts as parsing every time, a bounded memo, and bad
URLs refused every time (the policy itself is covered by test_outbox.py::test_netguard)."""

from __future__ import annotations

import pytest

from hub import netguard
from hub.errors import URLRefused
from hub.netguard import NetGuard
from reversehub.core.settings import Settings

pytestmark = pytest.mark.anyio


async def test_a_checked_url_gets_the_same_verdict_again() -> None:
    guard = NetGuard(Settings(public_url="http://hub.test"))
    for _ in range(3):
        await guard.check("http://93.184.216.34/cb?token=1")
        with pytest.raises(URLRefused, match="private"):
            await guard.check("http://10.0.0.8/cb?token=1")
        # Same host as httpx sees it, whatever the spelling: the memo keeps httpx's parse.
        with pytest.raises(URLRefused, match="private"):
            await guard.check("http://[::ffff:10.0.0.8]:8080/cb")


async def test_invalid_urls_are_refused_every_time() -> None:
    guard = NetGuard(Settings(public_url="http://hub.test"))
    for _ in range(2):
        with pytest.raises(URLRefused, match="invalid URL"):
            await guard.check("http://exa mple.com/\x00")
        with pytest.raises(URLRefused, match="no host"):
            await guard.check("http:///cb")


async def test_the_url_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netguard, "URLS_CACHED", 4)
    guard = NetGuard(Settings(public_url="http://hub.test"))
    for i in range(10):
        await guard.check(f"http://93.184.216.34/cb/{i}")
        assert len(guard._hosts) <= 4
    with pytest.raises(URLRefused):
        await guard.check("http://127.0.0.1/cb/0")
