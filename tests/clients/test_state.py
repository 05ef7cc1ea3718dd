"""The durable subscriber's state file (clients/state.py; the format in docs/subscribers.md)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from clients import state as state_file
from clients.state import SubscriberState


def example(**changes: object) -> SubscriberState:
    values: dict[str, object] = dict(
        hub="http://h/hub",
        topic="http://h/topics/t",
        relay="http://h/reversehttp",
        name="sub-0123456789abcdef",
        token="tok",
        secret="s" * 64,
        callback="http://h/relay/sub-0123456789abcdef/websub",
    )
    values.update(changes)
    return SubscriberState(**values)  # type: ignore[arg-type]


def test_saved_owner_only_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub.state"
    state_file.save(path, example(last_seq=7, lease_seconds=600, lease_expires_at=1.5))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # it holds the secret and the token
    assert state_file.load(path) == example(last_seq=7, lease_seconds=600, lease_expires_at=1.5)
    assert json.loads(path.read_text())["version"] == 1
    assert os.listdir(tmp_path) == ["sub.state"]  # no temporary file left behind


def test_replacing_keeps_it_private_even_over_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "sub.state"
    path.write_text("{}")
    path.chmod(0o644)
    state_file.save(path, example())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_fields_a_newer_writer_added_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "sub.state"
    path.write_text(json.dumps({**example().to_json(), "browser_tab": "x"}))
    loaded = state_file.load(path)
    assert loaded is not None and loaded.extra == {"browser_tab": "x"}
    loaded.last_seq = 3
    state_file.save(path, loaded)
    assert json.loads(path.read_text())["browser_tab"] == "x"


def test_no_file_is_no_state_and_delete_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "sub.state"
    assert state_file.load(path) is None
    state_file.save(path, example())
    state_file.delete(path)
    state_file.delete(path)
    assert not path.exists()


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        json.dumps({**example().to_json(), "version": 2}),
        json.dumps({k: v for k, v in example().to_json().items() if k != "token"}),
        json.dumps({**example().to_json(), "last_seq": "7"}),
    ],
)
def test_what_is_not_a_state_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "sub.state"
    path.write_text(content)
    with pytest.raises(ValueError):
        state_file.load(path)


def test_one_subscriber_at_a_time_per_state(tmp_path: Path) -> None:
    path = tmp_path / "sub.state"
    first, second = state_file.StateLock(path), state_file.StateLock(path)
    first.acquire()
    with pytest.raises(state_file.StateInUse):
        second.acquire()  # it would share the relay name's deliveries with the first
    first.release()
    second.acquire()
    second.release(remove=True)
    assert not (tmp_path / "sub.state.lock").exists()


def test_the_transport_is_kept_and_read_back() -> None:
    base = {"version": 1, "hub": "h", "topic": "t", "relay": "r", "name": "n", "token": "k", "secret": "s"}
    state = SubscriberState.from_json({**base, "callback": "c", "transport": "ptth"})
    assert state.transport == "ptth" and state.to_json()["transport"] == "ptth"
    assert SubscriberState.from_json({**base, "callback": "c"}).transport is None  # files from before it
