"""Client errors a person can act on (issue 16, item 5): every failure is a ClientError that names
the URL and says what to check; the httpx error stays available as ``__cause__``."""

from __future__ import annotations

import httpx
import pytest

from clients import (
    AsyncPublisher,
    AsyncSubscriber,
    ClientError,
    DiscoveryError,
    Endpoint,
    PublishError,
    Subscriber,
    UnreachableError,
    ping,
    publish,
)
from clients.cli import local_url
from relay.wire import HttpRequest, HttpResponse
from tests.support import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def down() -> str:
    """The origin of a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def hint(origin: str) -> str:
    return f"is `reversehub serve` running at {origin}?"


def test_publish_to_a_server_that_is_down(down: str) -> None:
    with pytest.raises(UnreachableError) as caught:
        publish("http://example.com/t", b"x", hub=f"{down}/hub")
    error = caught.value
    assert isinstance(error, ClientError)
    assert str(error) == f"cannot reach {down}/publish (connection refused): {hint(down)}"
    assert (error.url, error.reason) == (f"{down}/publish", "connection refused")
    assert isinstance(error.__cause__, httpx.ConnectError)


def test_ping_to_a_server_that_is_down(down: str) -> None:
    with pytest.raises(UnreachableError, match=r"^cannot reach .*/hub \(connection refused\): is `reversehub serve`"):
        ping("http://example.com/feed", hub=f"{down}/hub")


def test_ping_whose_topic_cannot_be_fetched(down: str) -> None:
    with pytest.raises(DiscoveryError) as caught:
        ping(f"{down}/feed")
    assert str(caught.value) == f"could not fetch {down}/feed to find its hub (connection refused)"


async def test_async_publisher_to_a_server_that_is_down(down: str) -> None:
    async with AsyncPublisher(f"{down}/hub") as publisher:
        with pytest.raises(UnreachableError) as caught:
            await publisher.publish("http://example.com/t", b"x")
    assert str(caught.value) == f"cannot reach {down}/publish (connection refused): {hint(down)}"


async def test_a_refused_publish_names_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, text="publishing needs a token\n")

    async with AsyncPublisher("http://hub.test/hub", transport=httpx.MockTransport(refuse)) as publisher:
        with pytest.raises(PublishError) as caught:
            await publisher.publish("http://example.com/t", b"x")
    assert str(caught.value) == (
        "http://hub.test/publish?hub.topic=http%3A%2F%2Fexample.com%2Ft refused the publish: "
        "HTTP 403 publishing needs a token"
    )
    assert caught.value.status == 403


async def test_subscriber_with_the_server_down(down: str) -> None:
    subscriber = AsyncSubscriber("http://example.com/t", lambda update: None, hub=f"{down}/hub")
    with pytest.raises(UnreachableError) as caught:
        await subscriber.start()
    # The relay is the first thing it asks: it is on the hub's server unless relay= says otherwise.
    assert str(caught.value) == f"cannot reach {down}/reversehttp (connection refused): {hint(down)}"


def test_blocking_subscriber_with_the_server_down(down: str) -> None:
    subscriber = Subscriber("http://example.com/t", lambda update: None, hub=f"{down}/hub")
    with pytest.raises(UnreachableError):
        subscriber.start()
    subscriber.stop()


async def test_endpoint_with_the_relay_down(down: str) -> None:
    async def handler(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, [], b"")

    endpoint = Endpoint(f"{down}/reversehttp", handler)
    with pytest.raises(UnreachableError) as caught:
        await endpoint.start()
    assert str(caught.value) == f"cannot reach {down}/reversehttp (connection refused): {hint(down)}"


async def test_a_url_without_a_scheme_is_not_blamed_on_the_server() -> None:
    async with AsyncPublisher("127.0.0.1:8000/hub") as publisher:
        with pytest.raises(UnreachableError) as caught:
            await publisher.publish("http://example.com/t", b"x")
    assert str(caught.value) == "cannot reach 127.0.0.1:8000/publish (not an http:// or https:// URL)"


@pytest.mark.parametrize(
    ("given", "url"),
    [
        ("18200", "http://127.0.0.1:18200"),
        (":3000", "http://127.0.0.1:3000"),
        ("localhost:3000", "http://localhost:3000"),
        ("[::1]:3000", "http://[::1]:3000"),
        ("http://127.0.0.1:3000/", "http://127.0.0.1:3000"),
        ("https://app.test/base", "https://app.test/base"),
        ("app.test", "http://app.test"),
    ],
)
def test_expose_to_takes_a_port_host_port_or_url(given: str, url: str) -> None:
    assert local_url(given) == url


@pytest.mark.parametrize("given", ["", "foo:bar", "99999", "0", "ftp://x:21", "http://", ":x"])
def test_expose_to_refuses_what_is_no_address(given: str) -> None:
    with pytest.raises(ValueError, match="is not a port, HOST:PORT or http"):
        local_url(given)


async def test_ownership_with_the_hub_down(down: str) -> None:
    from clients.ownership import Owner

    async with httpx.AsyncClient() as http:
        owner = Owner(http, f"{down}/hub", "http://example.com/t", "http://cb.test/x", "secret")
        with pytest.raises(UnreachableError) as caught:
            await owner.status()
        assert str(caught.value) == f"cannot reach {down}/hub/status (connection refused): {hint(down)}"
        with pytest.raises(UnreachableError):
            await owner.replay(0)
