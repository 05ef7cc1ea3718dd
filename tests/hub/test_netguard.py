"""NetGuard: every spelling of a refused address refused without a lookup, names resolved once with
the reason for a refusal and no verdict kept, redirects checked at every hop, and its URL -> host
memo (the same verdicts as parsing every time, bounded, bad URLs refused every time)."""

from __future__ import annotations

import socket

import httpx
import pytest

from hub import netguard
from hub.errors import FetchFailed, URLRefused
from hub.netguard import NetGuard
from reversehub.core.egress import Egress
from reversehub.core.settings import Settings
from tests.hub.peers import Peer, form
from tests.support import wait_for
from tests.test_egress import Stub

pytestmark = pytest.mark.anyio

# Loopback, private, link-local, reserved and metadata addresses, spelled every way a URL parser or
# C's inet_aton reads them, and the IPv6 forms that carry an IPv4 address.
SPELLINGS = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0177.0.0.1/",
    "http://0177.1/",
    "http://017700000001/",
    "http://0x7F.0x0.0x0.0x1/",
    "http://127.0.0.1./",
    "http://127.000.000.001/",
    "http://localhost/",
    "http://LOCALHOST/",
    "http://localhost./",
    "http://app.localhost/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::127.0.0.1]/",
    "http://[::]/",
    "http://0/",
    "http://0.0.0.0/",
    "http://0x0/",
    "http://10.0.0.1/",
    "http://012.0.0.1/",
    "http://167772161/",
    "http://172.16.0.1/",
    "http://172.31.255.255/",
    "http://192.168.0.1/",
    "http://3232235521/",
    "http://0xc0a80001/",
    "http://169.254.169.254/latest/meta-data/",
    "http://2852039166/",
    "http://0xa9fea9fe/",
    "http://0251.0376.0251.0376/",
    "http://[::ffff:169.254.169.254]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:a9fe:a9fe::]/",
    "http://[::a9fe:a9fe]/",
    "http://[::ffff:0:a9fe:a9fe]/",
    "http://[64:ff9b:1::808:808]/",
    "http://192.0.0.8/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[ff02::1]/",
    "http://198.18.0.1/",
    "https://user:pw@127.0.0.1:8443/x",
    "http://127.0.0.1:6379/",
    "http://[2001::1]/",
]


@pytest.mark.parametrize("url", SPELLINGS)
async def test_every_spelling_of_a_refused_address_is_refused_without_a_lookup(url: str) -> None:
    lookup = Stub({})
    guard = NetGuard(Settings(public_url="http://hub.test"), egress=Egress(lookup=lookup))
    with pytest.raises(URLRefused):
        await guard.check(url)
    with pytest.raises(URLRefused):
        await guard.check_resolved(url)
    assert lookup.asked == []
    await NetGuard(Settings(public_url="http://hub.test", allow_private_networks=True)).check_resolved(url)


async def test_a_name_is_resolved_once_per_check_and_no_verdict_is_kept() -> None:
    lookup = Stub({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]], "both.test": [["93.184.216.34", "10.1.1.1"]]})
    guard = NetGuard(Settings(public_url="http://hub.test"), egress=Egress(lookup=lookup))
    await guard.check_resolved("http://rebind.test/cb")
    with pytest.raises(URLRefused, match="rebind.test resolves to a loopback, private or reserved address"):
        await guard.check_resolved("http://rebind.test/cb")
    with pytest.raises(URLRefused, match="both.test resolves to"):
        await guard.check_resolved("https://both.test/cb")
    assert lookup.asked == ["rebind.test", "rebind.test", "both.test"]
    # check() takes no verdict about a name: the connection resolves and judges it (reversehub.core.egress).
    await guard.check("http://rebind.test/cb")
    assert len(lookup.asked) == 3


async def test_a_name_that_does_not_resolve_is_reported_as_such() -> None:
    guard = NetGuard(Settings(public_url="http://hub.test"), egress=Egress(lookup=Stub({})))
    with pytest.raises(URLRefused, match="^nowhere.test does not resolve$"):
        await guard.check_resolved("http://nowhere.test/cb?token=s3cret")


async def test_a_topic_that_does_not_resolve_is_denied_with_that_reason(make_hub, peer: Peer, monkeypatch) -> None:
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # the system resolver, without an answer for this one name
        if host in ("gone.test", b"gone.test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    app, client = await make_hub(allow_private_networks=False)
    callback = "http://93.184.216.34/cb"
    r = await client.post("/hub", data=form(mode="subscribe", topic="http://gone.test/feed", callback=callback))
    assert r.status_code == 202
    await wait_for(lambda: bool(peer.verifications))
    (denied,) = peer.verifications
    assert denied["hub.mode"] == "denied"
    assert denied["hub.reason"] == "topic not allowed: gone.test does not resolve"


async def test_redirects_are_checked_at_every_hop(make_app) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        hops = {
            "/feed": "http://93.184.216.34/next",
            "/next": "//0x7f000001/secret",  # scheme-relative, to loopback spelled as one number
            "/v6": "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",
        }
        return httpx.Response(302, headers={"Location": hops[request.url.path]})

    app, _ = await make_app(transport=httpx.MockTransport(handler), allow_private_networks=False)
    fetcher = app.state.hub.fetcher
    with pytest.raises(FetchFailed, match="0x7f000001 is on a loopback, private or reserved network"):
        await fetcher.fetch("http://93.184.216.34/feed")
    with pytest.raises(FetchFailed, match="64:ff9b::a9fe:a9fe is on a loopback"):
        await fetcher.fetch("http://93.184.216.34/v6")
    assert seen == ["http://93.184.216.34/feed", "http://93.184.216.34/next", "http://93.184.216.34/v6"]


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


async def test_the_callback_host_cap_counts_one_host_in_all_its_spellings(make_hub, peer: Peer) -> None:
    """``localhost``, ``127.1``, ``2130706433`` and ``0x7f000001`` are one host: one budget, not four."""
    from hub.store import host_of
    from tests.hub.conftest import subscribe

    spellings = ["localhost", "127.1", "2130706433", "0x7f000001", "127.0.0.1.", "[::ffff:127.0.0.1]"]
    assert {host_of(f"http://{host}:8080/cb") for host in spellings} == {"127.0.0.1"}
    app, client = await make_hub(max_subscriptions_per_callback_host=2)
    topic = "http://pub.test/topic"
    await subscribe(client, peer, topic, "http://localhost:8080/1")
    await subscribe(client, peer, topic, "http://127.1:8080/2")
    for i, host in enumerate(spellings[2:], start=3):
        r = await client.post("/hub", data=form(mode="subscribe", topic=topic, callback=f"http://{host}:8080/{i}"))
        assert r.status_code == 202
        await wait_for(lambda i=i: bool(peer.verified(f"/{i}", "denied")))
        assert peer.verified(f"/{i}", "denied")[0]["hub.reason"] == "too many subscriptions for this callback host"
