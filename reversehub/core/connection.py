"""A request's way to hear that its connection is gone, without a task watching ``receive()``.

``reversehub serve``'s HTTP protocol (:mod:`reversehub.server.protocol`) puts the connection's
:class:`OnLost` in every request's scope under :data:`ON_LOST`. A request that calls ``watch``
has its callback called once when the connection is lost (at once if it is already). At most one
request on a connection waits at a time (HTTP/1.1 answers in order), so one slot per connection is
enough. Under another server the key is absent and the request watches ``receive()`` for
``http.disconnect`` as ASGI says.

This module imports nothing, so the relay can use it without importing uvicorn.
"""

from __future__ import annotations

from collections.abc import Callable

ON_LOST = "reversehub.on_lost"
# The request's header names as the client wrote them (ASGI lowercases them), in the order of the
# scope's ``headers``: the relay hands a requester's headers on unaltered (ReverseHttp spec: "The
# Gateway Service MUST NOT alter the embedded HTTP headers"). Absent under another server.
RAW_HEADER_NAMES = "reversehub.raw_header_names"


class OnLost:
    """What to call when this connection is lost."""

    __slots__ = ("callback", "lost")

    def __init__(self) -> None:
        self.callback: Callable[[], object] | None = None
        self.lost = False

    def watch(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` when the connection is lost: at once if it already is."""
        if self.lost:
            callback()
        else:
            self.callback = callback

    def fire(self) -> None:
        self.lost = True
        callback, self.callback = self.callback, None
        if callback is not None:
            callback()
