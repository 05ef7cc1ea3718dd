"""Publishing to a hub: a fat ping (the body itself) or a light ping ("topic T changed, fetch it").

::

    from clients import publish, ping

    publish("http://example.com/chat", b'{"text": "hi"}', "application/json",
            hub="http://127.0.0.1:8000/hub")
    ping("http://127.0.0.1:8001/feed.xml")      # the hub is discovered from the feed

``Publisher``/``AsyncPublisher`` keep one connection pool for many publishes, like httpx's clients.
``publish`` POSTs the body to the hub's ``/publish?hub.topic=T`` (reversehub's fat ping);
``ping`` is the PubSubHubbub 0.4 ``hub.mode=publish&hub.url=T`` form POSTed to the hub, which any
WebSub hub that takes pings understands. Without ``hub=``, the hub is discovered from the topic.

``publish`` returns how many deliveries the hub queued (reversehub's ``X-Hub-Deliveries`` header):
0 means nobody subscribes to the topic, a typo'd topic for instance; None when the hub does not say
(another hub, or a retry it answered from its ``Idempotency-Key`` record). A ping is fetched later,
so the hub cannot say yet what it will deliver.
"""

from __future__ import annotations

from types import TracebackType
from urllib.parse import urljoin

import httpx

from clients.discovery import discover, discover_from
from clients.errors import DiscoveryError, PublishError, reason_of, server_hint, unreachable

DEFAULT_CONTENT_TYPE = "application/octet-stream"
# reversehub's answer to a fat ping: the number of subscriptions the body was queued for.
DELIVERIES_HEADER = "X-Hub-Deliveries"


def publish_url(hub: str) -> str:
    """reversehub's publish endpoint beside its hub endpoint: ``…/hub`` -> ``…/publish``."""
    return urljoin(hub, "publish")


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code >= 300:
        reason = " ".join(response.text.split())[:200]
        raise PublishError(
            f"{response.url} refused the {what}: HTTP {response.status_code} {reason}".rstrip(), response.status_code
        )


def deliveries(response: httpx.Response) -> int | None:
    """The deliveries a publish queued, as the hub told (None when it does not say)."""
    value = response.headers.get(DELIVERIES_HEADER, "")
    return int(value) if value.isascii() and value.isdigit() else None


def _failed(url: str, exc: httpx.HTTPError) -> Exception:
    return unreachable(url, exc, server_hint(url))


class AsyncPublisher:
    def __init__(self, hub: str | None = None, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.hub = hub
        self._http = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(30.0))

    async def _hub_for(self, topic: str) -> str:
        return self.hub or (await discover(topic, self._http)).hub

    async def publish(self, topic: str, body: bytes | str, content_type: str = DEFAULT_CONTENT_TYPE) -> int | None:
        """Distribute ``body`` as it is to the subscribers of ``topic``; returns the deliveries
        queued (0: nobody subscribes), None when the hub does not say."""
        content = body.encode() if isinstance(body, str) else body
        url = publish_url(await self._hub_for(topic))
        try:
            response = await self._http.post(
                url, params={"hub.topic": topic}, content=content, headers={"content-type": content_type}
            )
        except httpx.HTTPError as exc:
            raise _failed(url, exc) from exc
        _check(response, "publish")
        return deliveries(response)

    async def ping(self, topic_url: str) -> None:
        """Tell the hub ``topic_url`` changed; it fetches it and distributes what is new."""
        hub = await self._hub_for(topic_url)
        try:
            response = await self._http.post(hub, data={"hub.mode": "publish", "hub.url": topic_url})
        except httpx.HTTPError as exc:
            raise _failed(hub, exc) from exc
        _check(response, "ping")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncPublisher:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class Publisher:
    """The blocking twin of :class:`AsyncPublisher`."""

    def __init__(self, hub: str | None = None, *, transport: httpx.BaseTransport | None = None) -> None:
        self.hub = hub
        self._http = httpx.Client(transport=transport, timeout=httpx.Timeout(30.0))

    def _hub_for(self, topic: str) -> str:
        if self.hub:
            return self.hub
        try:
            response = self._http.get(topic, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise DiscoveryError(f"could not fetch {topic} to find its hub ({reason_of(exc)})") from exc
        return discover_from(response).hub

    def publish(self, topic: str, body: bytes | str, content_type: str = DEFAULT_CONTENT_TYPE) -> int | None:
        content = body.encode() if isinstance(body, str) else body
        url = publish_url(self._hub_for(topic))
        try:
            response = self._http.post(
                url, params={"hub.topic": topic}, content=content, headers={"content-type": content_type}
            )
        except httpx.HTTPError as exc:
            raise _failed(url, exc) from exc
        _check(response, "publish")
        return deliveries(response)

    def ping(self, topic_url: str) -> None:
        hub = self._hub_for(topic_url)
        try:
            response = self._http.post(hub, data={"hub.mode": "publish", "hub.url": topic_url})
        except httpx.HTTPError as exc:
            raise _failed(hub, exc) from exc
        _check(response, "ping")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def publish(
    topic: str, body: bytes | str, content_type: str = DEFAULT_CONTENT_TYPE, *, hub: str | None = None
) -> int | None:
    """One fat ping: distribute ``body`` (with ``content_type``) to the subscribers of ``topic``;
    returns the deliveries queued (0: nobody subscribes), None when the hub does not say."""
    with Publisher(hub) as publisher:
        return publisher.publish(topic, body, content_type)


def ping(topic_url: str, *, hub: str | None = None) -> None:
    """One light ping: the hub fetches ``topic_url`` and distributes its new entries."""
    with Publisher(hub) as publisher:
        publisher.ping(topic_url)


__all__ = ["AsyncPublisher", "Publisher", "ping", "publish"]
