"""A subscriber and publisher side for hub tests: a small recording ASGI app.

It answers intent verification (echoing ``hub.challenge`` unless told otherwise), records every
delivery, and serves topic documents with ETag / 304. Tests mount it through
``httpx.ASGITransport`` (fast path) or serve it on a real socket (``tests/live``). It is a peer of
the hub, not a mock of our code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    query: str = ""


@dataclass
class Document:
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class Peer:
    def __init__(self) -> None:
        self.verifications: list[dict[str, str]] = []
        self.deliveries: list[Delivery] = []
        self.fetches: list[tuple[str, dict[str, str]]] = []
        # path -> callable(params) -> (status, body) for verification; default echoes the challenge
        self.verify_answer: dict[str, Callable[[dict[str, str]], tuple[int, str]]] = {}
        # path -> list of statuses to answer deliveries with, consumed in order (then 204)
        self.delivery_status: dict[str, list[int]] = {}
        self.documents: dict[str, Document] = {}
        self.changed = anyio.Event()
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=["GET", "POST", "HEAD"])])

    def _notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    async def handle(self, request: Request) -> Response:
        path = request.url.path
        if request.method == "POST":
            self.deliveries.append(Delivery(path, dict(request.headers), await request.body(), request.url.query))
            self._notify()
            statuses = self.delivery_status.get(path)
            return Response(status_code=statuses.pop(0) if statuses else 204)
        if path in self.documents:
            doc = self.documents[path]
            self.fetches.append((path, dict(request.headers)))
            etag = '"' + hashlib.sha1(doc.body).hexdigest() + '"'
            headers = {"ETag": etag, **doc.headers}
            if request.headers.get("if-none-match") == etag:
                return Response(status_code=304, headers=headers)
            return Response(doc.body, media_type=doc.content_type, headers=headers)
        params = dict(request.query_params)
        params["_path"] = path
        self.verifications.append(params)
        self._notify()
        answer = self.verify_answer.get(path)
        if answer is not None:
            status, body = answer(params)
            return PlainTextResponse(body, status_code=status)
        return PlainTextResponse(params.get("hub.challenge", ""))

    def to(self, path: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.path == path]

    def verified(self, path: str, mode: str = "subscribe") -> list[dict[str, str]]:
        return [v for v in self.verifications if v["_path"] == path and v.get("hub.mode") == mode]


def form(**kwargs: Any) -> dict[str, str]:
    """``form(mode="subscribe", topic=...)`` -> ``{"hub.mode": "subscribe", "hub.topic": ...}``."""
    return {"hub." + k: str(v) for k, v in kwargs.items()}
