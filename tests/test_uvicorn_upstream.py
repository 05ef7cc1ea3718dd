"""What reversehub.server follows of uvicorn's insides, checked against the installed uvicorn.

``reversehub.server.protocol`` subclasses uvicorn's httptools protocol and ``reversehub.server.serve``
overrides ``uvicorn.Server`` hooks. pyproject.toml pins uvicorn to a tested release; when that pin is
moved, these tests name what changed under us instead of letting a server misbehave at run time.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
import uvicorn.server
from uvicorn.protocols.http import flow_control, httptools_impl

from reversehub.server.protocol import CoalescingHttpToolsProtocol, ListenerConfig, ListenerLimits
from reversehub.server.serve import DrainingServer

RELIED_ON: list[tuple[type, str, list[str]]] = [
    (httptools_impl.HttpToolsProtocol, "connection_made", ["self", "transport"]),
    (httptools_impl.HttpToolsProtocol, "connection_lost", ["self", "exc"]),
    (httptools_impl.HttpToolsProtocol, "on_message_begin", ["self"]),
    (httptools_impl.HttpToolsProtocol, "data_received", ["self", "data"]),
    (httptools_impl.HttpToolsProtocol, "on_headers_complete", ["self"]),
    (httptools_impl.HttpToolsProtocol, "on_body", ["self", "body"]),
    (httptools_impl.HttpToolsProtocol, "on_message_complete", ["self"]),
    (uvicorn.Server, "startup", ["self", "sockets"]),
    (uvicorn.Server, "shutdown", ["self", "sockets"]),
    (uvicorn.Server, "capture_signals", ["self"]),
    (uvicorn.Server, "handle_exit", ["self", "sig", "frame"]),
]


@pytest.mark.parametrize(("cls", "name", "params"), RELIED_ON, ids=[f"{c.__name__}.{n}" for c, n, _ in RELIED_ON])
def test_the_methods_we_override_keep_their_signatures(cls: type, name: str, params: list[str]) -> None:
    where = f"{cls.__module__}.{cls.__qualname__}.{name}"
    method = getattr(cls, name, None)
    assert callable(method), f"{where} is gone: reversehub.server.protocol / serve override it"
    got = list(inspect.signature(method).parameters)
    assert got == params, f"{where} now takes {got}, not {params}: review reversehub.server.protocol / serve"


def test_the_names_we_import_are_still_there() -> None:
    assert isinstance(flow_control.HIGH_WATER_LIMIT, int), "uvicorn.protocols.http.flow_control.HIGH_WATER_LIMIT"
    assert signal.SIGTERM in uvicorn.server.HANDLED_SIGNALS, "uvicorn.server.HANDLED_SIGNALS"
    assert "capture_signals" in inspect.getsource(uvicorn.Server.serve), (
        "uvicorn.server.Server.serve no longer enters capture_signals(): DrainingServer's override is not used"
    )


@pytest.mark.anyio
async def test_the_protocol_keeps_the_attributes_it_uses() -> None:
    """``loop`` and ``transport`` after construction and ``connection_made``; ``scope`` from
    ``on_message_begin``, into which the subclass puts the connection's OnLost; and what the
    listener's limits read: ``config.timeout_keep_alive``, ``connections`` (the server's set, which
    ``connection_made`` joins), ``flow.read_paused``, ``cycle.response_complete``,
    ``parser.should_upgrade()`` and ``server_state.default_headers``."""
    config = ListenerConfig(
        _app, limits=ListenerLimits(), http=CoalescingHttpToolsProtocol, ws="none", lifespan="off", log_level="error"
    )
    assert config.h11_max_incomplete_event_size == ListenerLimits().max_head_size, "uvicorn.Config keywords"
    assert isinstance(config.timeout_keep_alive, int | float), "uvicorn.Config.timeout_keep_alive"
    config.load()
    state = uvicorn.server.ServerState()
    protocol = CoalescingHttpToolsProtocol(config=config, server_state=state, app_state={})
    where = "uvicorn.protocols.http.httptools_impl.HttpToolsProtocol"
    assert protocol.loop is asyncio.get_running_loop(), f"{where}.loop"
    assert protocol.connections is state.connections, f"{where}.connections"
    transport = _Transport()
    protocol.connection_made(transport)  # type: ignore[arg-type]
    assert protocol.transport is not transport and protocol.transport.get_extra_info("peername"), f"{where}.transport"
    assert protocol in state.connections, f"{where}.connection_made adds to server_state.connections"
    assert protocol.flow.read_paused is False, f"{where}.flow.read_paused"
    assert isinstance(protocol.server_state.default_headers, list), f"{where}.server_state.default_headers"
    protocol.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(protocol.scope, dict) and protocol.scope["path"] == "/", f"{where}.scope"
    assert protocol.cycle.response_complete is False, f"{where}.cycle.response_complete"
    assert protocol.parser.should_upgrade() is False, f"{where}.parser"
    protocol.connection_lost(None)


def test_a_drained_server_does_not_raise_its_signal_again() -> None:
    """uvicorn raises the signal that stopped it once it is done (the process would end "killed by
    SIGTERM"); DrainingServer has drained by then, so the process must be left to exit 0."""
    raised: list[int] = []
    outer = signal.signal(signal.SIGTERM, lambda sig, _frame: raised.append(sig))
    try:
        before = signal.getsignal(signal.SIGTERM)
        server = DrainingServer(uvicorn.Config(app=_app))
        with server.capture_signals():
            assert signal.getsignal(signal.SIGTERM) == server.handle_exit
            signal.raise_signal(signal.SIGTERM)
            assert server.should_exit and not server.force_exit
        assert signal.getsignal(signal.SIGTERM) is before
        assert raised == []
    finally:
        signal.signal(signal.SIGTERM, outer)


async def _app(scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    """Never called: the protocol test stops before a request runs to completion."""


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1), "sockname": ("127.0.0.1", 2)}.get(name, default)

    def write(self, data: Any) -> None:
        self.written.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass
