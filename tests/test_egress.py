"""reversehub.core.egress: how addresses are judged (IPv6 forms that carry IPv4 included), hosts
normalised, and names resolved once with the reason for a refusal."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

import pytest

from reversehub.core.egress import Egress, Refused, ip_literal, normalize_host, refused_address

pytestmark = pytest.mark.anyio


# IPv6 forms that carry an IPv4 address are judged by it: where a packet to them ends up.
@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("64:ff9b::7f00:1", True),  # NAT64 of 127.0.0.1
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("64:ff9b::a00:1", True),  # NAT64 of 10.0.0.1
        ("64:ff9b::808:808", False),  # NAT64 of 8.8.8.8: a public address
        ("64:ff9b:1::808:808", True),  # local-use NAT64: refused whatever it carries
        ("64:ff9b:1::7f00:1", True),
        ("2002:7f00:1::", True),  # 6to4 of 127.0.0.1
        ("2002:a9fe:a9fe::1", True),  # 6to4 of 169.254.169.254
        ("2002:808:808::1", False),  # 6to4 of 8.8.8.8
        ("::7f00:1", True),  # IPv4-compatible 127.0.0.1
        ("::a9fe:a9fe", True),
        ("::ffff:7f00:1", True),  # IPv4-mapped
        ("::ffff:a9fe:a9fe", True),
        ("::ffff:808:808", False),
        ("::ffff:0:7f00:1", True),  # IPv4-translated (SIIT)
        ("::ffff:0:a00:1", True),
        ("192.0.0.8", True),  # the IPv4 dummy address (RFC 7600)
        ("2001::1", True),  # Teredo: the client address is obfuscated
        ("::", True),
        ("::1", True),
        ("100.64.0.1", True),  # shared address space (CGNAT)
        ("224.0.0.1", True),
        ("ff0e::1", True),
        ("93.184.216.34", False),
        ("2606:2800:220:1:248:1893:25c8:1946", False),
    ],
)
def test_addresses_are_judged_by_where_they_lead(address: str, refused: bool) -> None:
    assert refused_address(ipaddress.ip_address(address)) is refused


def test_one_host_spelled_four_ways_is_one_host() -> None:
    spellings = [
        "localhost",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.0.0.1.",
        "LocalHost.",
        "[::ffff:127.0.0.1]",
    ]
    assert {normalize_host(s) for s in spellings} == {"127.0.0.1"}
    assert normalize_host("Example.COM.") == "example.com"
    assert normalize_host("[0:0::1]") == "::1"
    # Not addresses: names that only look numeric in part stay names.
    assert ip_literal("1.2.3.4.5") is None and ip_literal("08.1") is None and ip_literal("0x1g") is None
    assert ip_literal("1.2.3.256") is None and ip_literal("1.16777216") is None
    assert ip_literal("1.16777215") == ipaddress.ip_address("1.255.255.255")


class Stub:
    """A resolver that gives each name's answers in turn (then its last one again), and records lookups."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        turn = self.asked.count(host)
        self.asked.append(host)
        turns = self.answers.get(host)
        if turns is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return turns[min(turn, len(turns) - 1)]


async def test_a_name_is_refused_if_any_of_its_addresses_is() -> None:
    lookup = Stub({"mixed.test": [["93.184.216.34", "10.0.0.1"]], "fine.test": [["93.184.216.34", "2606:2800::1"]]})
    egress = Egress(lookup=lookup)
    with pytest.raises(Refused, match="mixed.test resolves to a loopback, private or reserved address"):
        await egress.addresses("mixed.test", 80)
    assert await egress.addresses("fine.test", 80) == ["93.184.216.34", "2606:2800::1"]


async def test_a_name_that_does_not_resolve_is_reported_as_such() -> None:
    egress = Egress(lookup=Stub({"empty.test": [[]]}))
    for host in ("nowhere.test", "empty.test"):
        with pytest.raises(Refused, match=f"^{host} does not resolve$"):
            await egress.addresses(host, 443)
    # Without the policy too: there is nothing to connect to.
    with pytest.raises(Refused, match="does not resolve"):
        await Egress(allow_private=True, lookup=Stub({})).addresses("nowhere.test", 80)


async def test_no_verdict_is_kept_each_attempt_resolves_again() -> None:
    lookup = Stub({"rebind.test": [["93.184.216.34"], ["127.0.0.1"]]})
    egress = Egress(lookup=lookup)
    assert await egress.addresses("rebind.test", 80) == ["93.184.216.34"]
    with pytest.raises(Refused, match="rebind.test resolves to"):
        await egress.addresses("rebind.test", 80)
    assert lookup.asked == ["rebind.test", "rebind.test"]


async def test_address_literals_need_no_lookup_and_are_judged_in_any_spelling() -> None:
    lookup = Stub({})
    egress = Egress(lookup=lookup)
    for host in ("127.1", "2130706433", "0x7f000001", "::ffff:7f00:1", "[64:ff9b::a9fe:a9fe]", "fe80::1%eth0"):
        with pytest.raises(Refused, match="loopback, private or reserved network"):
            await egress.addresses(host, 80)
    assert await egress.addresses("0x5db8d822", 80) == ["93.184.216.34"]  # the address that was judged
    assert await Egress(allow_private=True, lookup=Stub({})).addresses("127.1", 80) == ["127.0.0.1"]
    assert lookup.asked == []


def test_connect_timeout_flag_and_variable() -> None:
    from reversehub.core.settings import Settings
    from tests.test_security import parse_serve

    code, flagged, output = parse_serve(["--connect-timeout", "1.5"])
    assert code == 0 and flagged is not None and flagged.connect_timeout == 1.5, output
    code, from_env, output = parse_serve([], env={"REVERSEHUB_CONNECT_TIMEOUT": "0.5"})
    assert code == 0 and from_env is not None and from_env.connect_timeout == 0.5, output
    assert Settings().connect_timeout == 3.0
