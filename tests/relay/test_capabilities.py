"""A capability has one spelling (issue 13 L5): base64url decoding that skipped characters outside
the alphabet, padding and dropped bits let one capability be written many ways, each a URL of its
own (and a key of its own for the per-URL poll budget)."""

from __future__ import annotations

import binascii

import pytest

from tests.relay.helpers import register

pytestmark = pytest.mark.anyio


def _spellings(cap: str) -> list[str]:
    """Other spellings binascii decodes to the same bytes: padding, a character outside the alphabet,
    and a last character that differs only in bits the decoding drops."""
    urlsafe = bytes.maketrans(b"-_", b"+/")

    def lenient(text: str) -> bytes:
        return binascii.a2b_base64(text.encode().translate(urlsafe) + b"=" * (-len(text) % 4))

    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = next(c for c in alphabet if c != cap[-1] and lenient(cap[:-1] + c) == lenient(cap))
    return [cap + "=", cap[:4] + "...." + cap[4:], cap[:-1] + twin]


async def test_a_capability_has_one_spelling(make_app):
    _, client = await make_app(poll_timeout=0.05)
    urls = await register(client, "cap")  # 3 letters: request and private capabilities end in dropped bits
    request_cap = urls["first"].rsplit("/", 1)[1]
    private_cap = urls["location"].rsplit("/", 1)[1]
    assert (await client.get(urls["first"])).status_code == 204
    assert (await client.get(urls["location"])).status_code == 200
    for other in _spellings(request_cap):
        assert (await client.get("/reversehttp/r/" + other)).status_code == 404, other
    for other in _spellings(private_cap):
        assert (await client.get("/reversehttp/p/" + other)).status_code == 404, other


async def test_request_urls_made_here_are_remembered_within_a_bound(monkeypatch, settings):
    """The request URLs this process made (polled without a MAC check) and the registrations it
    caches are bounded; a URL pushed out of the first is still accepted, checked like any other."""
    from relay import registry as module
    from relay.registry import Reg, Registry
    from reversehub.core import db

    monkeypatch.setattr(module, "ISSUED_CAPS", 3)
    monkeypatch.setattr(module, "CACHED_NAMES", 2)
    engine = db.create_engine(settings.database_url)
    try:
        registry = Registry(db.sessionmaker(engine), settings)
        reg = Reg("app", b"s" * 32, 60.0, 0.0, 1e12)
        caps = [registry.issue_request_cap(reg) for _ in range(5)]
        assert list(registry._issued) == caps[2:]
        for name in ("a", "b", "c"):
            registry._remember(name, None)
        assert list(registry._cache) == ["b", "c"]
        registry._remember("app", reg)
        assert await registry.by_request_cap(caps[0]) == reg  # no longer remembered: checked by its MAC
        assert await registry.by_request_cap(caps[4]) == reg
        assert await registry.by_request_cap(caps[4][:-2] + "AA") is None
    finally:
        await engine.dispose()
