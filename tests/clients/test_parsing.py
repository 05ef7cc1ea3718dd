"""The clients' pure parts: Link headers, hub discovery in headers and bodies, signatures, updates."""

from __future__ import annotations

import hmac
from typing import Any

import httpx
import pytest

from clients._links import find_link, parse_links
from clients.discovery import discover_from
from clients.errors import DiscoveryError
from clients.subscriber import relay_for, signature_ok
from clients.update import Update


def test_links_comma_joined_and_separate_lines() -> None:
    joined = ['<http://h/r/1>; rel="first", <http://h/relay/a/>; rel=related, <x>; rel="next self"']
    assert find_link(joined, "first") == "http://h/r/1"
    assert find_link(joined, "related") == "http://h/relay/a/"
    assert find_link(joined, "next", "http://h/base/") == "http://h/base/x"
    assert find_link(joined, "self", "http://h/base/") == "http://h/base/x"
    separate = ['<http://h/r/1>; rel="first"', '<http://h/relay/a/>;rel="related"']
    assert find_link(separate, "related") == "http://h/relay/a/"
    assert find_link(separate, "hub") is None


def test_links_with_commas_and_semicolons_inside() -> None:
    links = parse_links(['<http://h/a,b;c>; title="x, y; z"; rel="hub", <http://h/t>; rel="self"'])
    assert links == [("http://h/a,b;c", {"hub"}), ("http://h/t", {"self"})]


def response(body: str = "", headers: dict[str, str] | None = None, url: str = "http://pub.test/feed") -> Any:
    return httpx.Response(200, headers=headers, content=body.encode(), request=httpx.Request("GET", url))


def test_discovery_prefers_headers() -> None:
    r = response(
        '<html><head><link rel="hub" href="http://other/hub"></head></html>',
        {"link": '<http://hub.test/hub>; rel="hub", <http://pub.test/canonical>; rel="self"'},
    )
    found = discover_from(r)
    assert (found.hub, found.topic) == ("http://hub.test/hub", "http://pub.test/canonical")


@pytest.mark.parametrize(
    "body",
    [
        '<!doctype html><html><head><LINK REL="Hub" HREF="/hub"><link rel="self" href="/canonical"></head></html>',
        '<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><link rel="hub" href="/hub"/>'
        '<link rel="self" href="http://pub.test/canonical"/></feed>',
        '<?xml version="1.0"?><rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom"><channel>'
        '<atom:link rel="hub" href="http://pub.test/hub"/><atom:link rel="self" href="/canonical"/></channel></rss>',
    ],
    ids=["html", "atom", "rss"],
)
def test_discovery_in_bodies(body: str) -> None:
    found = discover_from(response(body))
    assert (found.hub, found.topic) == ("http://pub.test/hub", "http://pub.test/canonical")


def test_discovery_without_self_uses_the_url_and_without_hub_fails() -> None:
    assert discover_from(response('<link rel="hub" href="http://h/hub">')).topic == "http://pub.test/feed"
    with pytest.raises(DiscoveryError):
        discover_from(response("<html><link rel='stylesheet' href='x.css'></html>"))


def test_relay_is_beside_the_hub() -> None:
    assert relay_for("http://host:8000/hub") == "http://host:8000/reversehttp"
    assert relay_for("https://example.com/prefix/hub") == "https://example.com/prefix/reversehttp"


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha384", "sha512"])
def test_signatures(algorithm: str) -> None:
    digest = hmac.new(b"s3cret", b"body", algorithm).hexdigest()
    assert signature_ok(b"s3cret", f"{algorithm}={digest}", b"body")
    assert signature_ok(b"s3cret", f"{algorithm.upper()}={digest.upper()}", b"body")
    assert not signature_ok(b"s3cret", f"{algorithm}={digest}", b"other body")
    assert not signature_ok(b"other", f"{algorithm}={digest}", b"body")
    assert not signature_ok(b"s3cret", f"md5={digest}", b"body")
    assert not signature_ok(b"s3cret", None, b"body")


def test_update_feed_entries_text_and_json() -> None:
    atom = (
        b'<?xml version="1.0"?><feed xmlns="http://www.w3.org/2005/Atom"><title>t</title>'
        b'<entry><id>urn:1</id><title>First</title><link href="http://x/1"/></entry></feed>'
    )
    update = Update("http://t", atom, "application/atom+xml", httpx.Headers({"webhook-id": "msg_1"}))
    assert update.is_feed and update.id == "msg_1"
    assert [(e.title, e.link) for e in update.entries] == [("First", "http://x/1")]
    plain = Update("http://t", "héllo".encode("latin-1"), "text/plain; charset=latin-1", httpx.Headers())
    assert plain.text == "héllo" and plain.entries == [] and plain.id is None
    assert Update("http://t", b'{"a": 1}', "application/json", httpx.Headers()).json() == {"a": 1}
