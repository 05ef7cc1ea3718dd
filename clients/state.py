"""A durable subscriber's state file: what makes it the same subscriber again after a restart.

The format is written down in ``docs/subscribers.md`` (the browser library keeps the same object in
``localStorage``). The file holds a secret and a token, so it is created 0600; every change replaces
it atomically (a temporary file in the same directory, fsync, ``os.replace``, fsync of the
directory), so a crash at any moment leaves the old state or the new one, never a torn file.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from typing import Any

try:
    import fcntl
except ImportError:  # not POSIX: no lock, the rest works the same
    fcntl = None  # type: ignore[assignment]

VERSION = 1


class StateInUse(ValueError):
    """Another subscriber runs with this state file."""


@dataclass
class SubscriberState:
    """One subscription's resumable state (see ``docs/subscribers.md``, "The state file")."""

    hub: str
    topic: str
    relay: str
    name: str
    token: str
    secret: str
    callback: str
    last_seq: int = 0
    lease_seconds: int | None = None
    lease_expires_at: float | None = None
    # How the subscriber reached the relay when it last wrote the file (ptth, long-poll): shown, never read.
    transport: str | None = None
    # Fields a newer writer added, kept as they were so that writing back loses nothing.
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        values = asdict(self)
        extra = values.pop("extra")
        return {**extra, "version": VERSION, **values}

    @classmethod
    def from_json(cls, data: Any) -> SubscriberState:
        if not isinstance(data, dict):
            raise ValueError("a subscriber state is a JSON object")
        if data.get("version") != VERSION:
            raise ValueError(f"unknown subscriber state version {data.get('version')!r} (this client reads {VERSION})")
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = sorted(k for k in ("hub", "topic", "relay", "name", "token", "secret", "callback") if k not in data)
        if missing:
            raise ValueError(f"subscriber state lacks {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k in known}
        if not isinstance(values.get("last_seq", 0), int):
            raise ValueError("last_seq must be an integer")
        extra = {k: v for k, v in data.items() if k not in known and k != "version"}
        return cls(**values, extra=extra)


def load(path: str | os.PathLike[str]) -> SubscriberState | None:
    """The state in ``path``; None when there is no such file. Raises ValueError when it is not one."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)} is not a subscriber state file: {exc}") from exc
    return SubscriberState.from_json(data)


def save(path: str | os.PathLike[str], state: SubscriberState) -> None:
    """Replace ``path`` with ``state``, atomically and durably, readable by its owner only."""
    target = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(target)
    data = (json.dumps(state.to_json(), indent=2) + "\n").encode()
    # mkstemp creates the file 0600 from the start: the secret is never readable by others, not
    # even between the write and a chmod.
    fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def delete(path: str | os.PathLike[str]) -> None:
    """Remove the state file (the subscription has ended); no error if it is already gone."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    _fsync_directory(os.path.dirname(os.path.abspath(os.fspath(path))))


def _fsync_directory(directory: str) -> None:
    # The rename is durable only once the directory entry is: without this a power cut may bring
    # back the old file (or none) although the new one was fsynced.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the replace itself is still atomic
    finally:
        os.close(fd)


class StateLock:
    """``PATH.lock``, held while a subscriber runs with the state in PATH.

    Two subscribers with one state would poll one relay name and share its deliveries, each seeing
    the other's as gaps; the second one is refused (:class:`StateInUse`) instead. The lock is the
    kernel's (``flock``), so a subscriber that is killed leaves none behind."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path) + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None or self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StateInUse(f"another subscriber runs with {self.path.removesuffix('.lock')}") from None
        self._fd = fd

    def release(self, remove: bool = False) -> None:
        """Let go; ``remove``: the state is gone too (unsubscribed), so is the lock file."""
        if self._fd is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        os.close(self._fd)
        self._fd = None
