"""Registrations: names, tokens, leases, and the capability URLs derived from them.

A registration is a row (relay.models). Everything else is derived from its ``secret`` so that no
other state has to be stored or shared between processes:

- the private URL's capability (relay.routes): ``cap = b64url(HMAC(secret, "private")[:16] + name)``;
- request URLs' capabilities: ``cap = b64url(nonce[16] + HMAC(secret, nonce + name)[:16] + name)``.

Both are unguessable (128-bit MACs), verifiable by any process that can read the row, survive a
restart, and die with the registration (a new registration of the name gets a new secret).

Lookups by name are cached for ``CACHE_TTL`` seconds (positive and negative) so the hot path of a
relayed request does not touch the database; processes drop entries on ``relay.changed`` messages.
With the in-process broker there is one process and no message can be missed, so entries live for
``SOLO_CACHE_TTL``: a short TTL would make a publish to subscribers registered longer ago read every
subscriber's row again, one query per delivery. An entry whose lease looks over is read
again before the name is treated as gone (leases are extended in the database by whichever process
has the pollers; this process updates its own entries when it extends them).
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import anyio
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from relay.errors import ClientShareSpent, InvalidInput, NotFound, RelayFull, TokenMismatch
from relay.models import Registration
from reversehub.core.policy import check_registration_cap, check_registration_share
from reversehub.core.settings import Settings

# Other processes announce their changes on relay.changed; the TTL only bounds a missed message.
CACHE_TTL = 5.0
CACHED_NAMES = 100_000  # registrations cached per process
ISSUED_CAPS = 100_000  # request URLs made here and not yet polled, remembered per process
TOUCH_CHUNK = 5000  # names per UPDATE when leases are extended
SOLO_CACHE_TTL = 24 * 3600.0
# RFC 1034 3.5 label (with RFC 1123's leading digit): 1-63 letters, digits and inner hyphens.
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MAC_SIZE = 16
_NONCE_SIZE = 16
# Nonces are cut from random bytes drawn 256 at a time: one system call (costly in sandboxes) per
# 256 delivered requests, and a slice is cheaper than hashing a counter.
_NONCE_BATCH = 256
_nonce_pool = b""
_nonce_pos = 0


def _nonce() -> bytes:
    global _nonce_pool, _nonce_pos
    if _nonce_pos >= len(_nonce_pool):
        _nonce_pool, _nonce_pos = secrets.token_bytes(_NONCE_SIZE * _NONCE_BATCH), 0
    start = _nonce_pos
    _nonce_pos = start + _NONCE_SIZE
    return _nonce_pool[start:_nonce_pos]


@dataclass(frozen=True)
class Reg:
    """A registration as the hot path sees it (no token)."""

    name: str
    secret: bytes
    lease_seconds: float
    created_at: float
    expires_at: float
    mailbox: bool = False  # relay.mailbox: requests that find no poller are stored


def is_label(name: str) -> bool:
    """``name`` is one lowercase DNS label (RFC 1034 3.5), the only form a relay name takes."""
    return _LABEL.fullmatch(name) is not None


def normalize_name(raw: str | None) -> str:
    """The lowercased name, or InvalidInput if it is not a DNS label."""
    if raw is None or raw == "":
        raise InvalidInput("missing name")
    name = raw.lower()
    if not _LABEL.match(name):
        raise InvalidInput("name must be a DNS label: 1-63 letters, digits or inner hyphens")
    return name


def parse_lease(raw: str | None, settings: Settings) -> float | None:
    """A lease in whole seconds clamped to the configured bounds; None when absent."""
    if raw is None:
        return None
    raw = raw.strip()
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 12:  # isdigit alone takes "²", which int refuses
        raise InvalidInput("lease must be a number of seconds")
    return min(max(float(int(raw)), settings.lease_min), settings.lease_max)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# URL-safe base64 without padding (RFC 4648 5), through binascii directly: base64's wrappers cost
# more than the decoding on the hot path (every poll and reply reads a capability).
_TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).translate(_TO_URLSAFE).rstrip(b"=").decode("ascii")


def _unb64(cap: str) -> bytes | None:
    """The bytes of a capability in its one canonical spelling, else None.

    binascii skips characters outside the alphabet and ignores the unused low bits of the last
    character, so without the round trip one capability would have many spellings, each a key of
    its own for the per-URL budgets (and a URL the owner never handed out).
    """
    if not cap or len(cap) > 200 or not cap.isascii():
        return None
    try:
        raw = binascii.a2b_base64(cap.encode("ascii").translate(_FROM_URLSAFE) + b"=" * (-len(cap) % 4))
    except binascii.Error:
        return None
    return raw if _b64(raw) == cap else None


@functools.lru_cache(maxsize=4096)
def _keyed(secret: bytes) -> hmac.HMAC:
    """An HMAC with ``secret`` already hashed in, only ever copied: copying one costs less than
    keying a new one (OpenSSL 3 looks the digest up on every ``hmac.new``)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def _mac(secret: bytes, message: bytes) -> bytes:
    mac = _keyed(secret).copy()
    mac.update(message)
    return mac.digest()[:_MAC_SIZE]


def private_cap(reg: Reg) -> str:
    return _b64(_mac(reg.secret, b"private") + reg.name.encode("ascii"))


def request_cap(reg: Reg) -> str:
    nonce = _nonce()
    return _b64(nonce + _mac(reg.secret, nonce + reg.name.encode("ascii")) + reg.name.encode("ascii"))


def cap_name(cap: str, *, private: bool) -> str | None:
    """The name a capability claims (verify it with :func:`cap_valid` once the row is known)."""
    raw = _unb64(cap)
    head = _MAC_SIZE if private else _NONCE_SIZE + _MAC_SIZE
    if raw is None or len(raw) <= head:
        return None
    try:
        name = raw[head:].decode("ascii")
    except UnicodeDecodeError:
        return None
    return name if _LABEL.match(name) else None


def cap_valid(cap: str, reg: Reg, *, private: bool) -> bool:
    raw = _unb64(cap)
    if raw is None:
        return False
    name = reg.name.encode("ascii")
    if private:
        return hmac.compare_digest(raw, _mac(reg.secret, b"private") + name)
    nonce = raw[:_NONCE_SIZE]
    return hmac.compare_digest(raw[_NONCE_SIZE:], _mac(reg.secret, nonce + name) + name)


def _snapshot(row: Registration) -> Reg:
    return Reg(
        row.name, bytes.fromhex(row.secret), row.lease_seconds, row.created_at, row.expires_at, bool(row.mailbox)
    )


class Registry:
    """Registration rows plus a short-lived in-process cache of them."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], settings: Settings, cache_ttl: float = CACHE_TTL
    ) -> None:
        self.sessions = sessions
        self.settings = settings
        self.cache_ttl = cache_ttl
        # name -> (registration or None, fresh until): bounded, the least recently used go first.
        # OrderedDicts kept by hand rather than cachetools' LRUCache, whose every get and set is
        # several Python calls: both maps are read or written on each poll and relayed request.
        self._cache: OrderedDict[str, tuple[Reg | None, float]] = OrderedDict()
        # One database read per name at a time: concurrent misses wait for it (no thundering herd).
        self._loading: dict[str, asyncio.Future[Reg | None]] = {}
        # Request capabilities this process made and nobody has used yet, with the secret they were
        # made with: their poll needs no MAC check (most polls come back to the process that made
        # their URL). A registration made anew has a new secret, so its old URLs still fail.
        # Bounded: the URLs that go are the oldest never polled (their pollers left), and a URL no
        # longer here is still accepted, only checked.
        self._issued: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def forget(self, name: str) -> None:
        self._cache.pop(name, None)

    def _remember(self, name: str, reg: Reg | None) -> None:
        cache = self._cache
        cache[name] = (reg, time.monotonic() + self.cache_ttl)
        cache.move_to_end(name)
        if len(cache) > CACHED_NAMES:
            cache.popitem(last=False)

    def cached_lease(self, name: str) -> float | None:
        """The lease of ``name`` as last read or written here, if it is cached (no database read)."""
        hit = self._cache.get(name)
        return hit[0].lease_seconds if hit is not None and hit[0] is not None else None

    async def lookup(self, name: str) -> Reg | None:
        """The live registration of ``name`` (already lowercased), from the cache when fresh."""
        hit = self._cache.get(name)
        if hit is not None and hit[1] > time.monotonic():
            self._cache.move_to_end(name)
            reg = hit[0]
            if reg is not None and reg.expires_at < time.time() - CACHE_TTL:
                reg = await self._load(name)  # the lease may have been extended since it was cached
        else:
            reg = await self._load(name)
        if reg is not None and reg.expires_at < time.time() - CACHE_TTL:
            return None  # expired but not swept yet: as good as gone
        return reg

    async def _load(self, name: str) -> Reg | None:
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[Reg | None] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            # Shielded: others wait on this read, and aiosqlite hangs on a query cancelled half-way.
            with anyio.CancelScope(shield=True):
                async with self.sessions() as session:
                    row = await session.get(Registration, name)
                    reg = _snapshot(row) if row is not None else None
            self._remember(name, reg)
            future.set_result(reg)
            return reg
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody logs "never retrieved"
            raise
        finally:
            del self._loading[name]

    def issue_request_cap(self, reg: Reg) -> str:
        """A fresh request URL capability for ``reg`` (see :func:`request_cap`)."""
        cap = request_cap(reg)
        issued = self._issued
        issued[cap] = (reg.name, reg.secret)
        if len(issued) > ISSUED_CAPS:
            issued.popitem(last=False)
        return cap

    async def by_request_cap(self, cap: str) -> Reg | None:
        """The registration a request URL capability belongs to, if it is valid.

        The first use of a URL made here skips the MAC check; any later one (a GET repeated after a
        204 or a lost response) is checked like a URL made elsewhere.
        """
        issued = self._issued.pop(cap, None)
        if issued is not None:
            reg = await self.lookup(issued[0])
            if reg is not None and reg.secret == issued[1]:
                return reg
        name = cap_name(cap, private=False)
        reg = await self.lookup(name) if name else None
        return reg if reg is not None and cap_valid(cap, reg, private=False) else None

    async def by_private_cap(self, cap: str) -> Reg:
        name = cap_name(cap, private=True)
        reg = await self.lookup(name) if name else None
        if reg is None or not cap_valid(cap, reg, private=True):
            raise NotFound("no such registration")
        return reg

    async def register(
        self,
        raw_name: str | None,
        token: str | None,
        raw_lease: str | None,
        client: str | None = None,
        mailbox: bool | None = None,
    ) -> tuple[Reg, bool]:
        """Create or refresh; returns (registration, created). Spec: "Registration".

        ``client`` (:func:`reversehub.core.limits.client_key`) is who creates it, for the per-client
        share of ``--max-registrations``; None for a client exempt from limits. ``mailbox`` sets
        mailbox mode (relay.mailbox); None keeps what the registration has (off for a new one)."""
        name = normalize_name(raw_name)
        lease = parse_lease(raw_lease, self.settings)
        # No token: act as if a fresh random one was given (first come, first served).
        token_hash = hash_token(token if token is not None else secrets.token_urlsafe(32))
        try:
            return await self._register(name, token_hash, lease, client, mailbox)
        except (IntegrityError, StaleDataError):
            # A race SQLite has no row lock to serialize: two first registrations of one name (the
            # loser now finds the row and refreshes it or gets 403, like any later comer), or a
            # refresh whose row was deleted under it (the retry registers the name anew, as if the
            # delete had come first).
            return await self._register(name, token_hash, lease, client, mailbox)

    async def _register(
        self, name: str, token_hash: str, lease: float | None, client: str | None, mailbox: bool | None
    ) -> tuple[Reg, bool]:
        now = time.time()
        async with self.sessions.begin() as session:
            row = await session.get(Registration, name, with_for_update=True)
            if row is not None and row.expires_at < now:
                await session.delete(row)
                await session.flush()
                row = None
            if row is None:
                # A cap on names keeps one client from filling the table (--max-registrations).
                count = await session.scalar(select(func.count()).select_from(Registration))
                if reason := check_registration_cap(self.settings, count or 0):
                    raise RelayFull(reason)
                # A share of the cap per client: one client must not fill it and hold it for the lease.
                if client is not None and self.settings.max_registrations_per_client:
                    mine = await session.scalar(
                        select(func.count())
                        .select_from(Registration)
                        .where(Registration.client == client, Registration.expires_at >= now)
                    )
                    if reason := check_registration_share(self.settings, mine or 0):
                        raise ClientShareSpent(reason)
                lease_s = lease if lease is not None else self.settings.lease_default
                row = Registration(
                    name=name,
                    token_hash=token_hash,
                    secret=secrets.token_hex(32),
                    lease_seconds=lease_s,
                    created_at=now,
                    expires_at=now + lease_s,
                    client=client,
                    mailbox=bool(mailbox),
                )
                session.add(row)
                created = True
            else:
                if not hmac.compare_digest(row.token_hash, token_hash):
                    raise TokenMismatch()
                if lease is not None:
                    row.lease_seconds = lease
                row.expires_at = now + row.lease_seconds
                if mailbox is not None:
                    row.mailbox = mailbox
                created = False
            reg = _snapshot(row)
        self._remember(name, reg)
        return reg, created

    async def reconfigure(self, reg: Reg, token: str | None, raw_lease: str | None) -> Reg:
        """PUT on the private URL: update ``lease`` and ``token`` if given (``name`` is ignored)."""
        lease = parse_lease(raw_lease, self.settings)
        async with self.sessions.begin() as session:
            row = await session.get(Registration, reg.name, with_for_update=True)
            if row is None or row.secret != reg.secret.hex():
                raise NotFound("no such registration")
            if lease is not None:
                row.lease_seconds = lease
            if token is not None:
                row.token_hash = hash_token(token)
            row.expires_at = time.time() + row.lease_seconds
            new = _snapshot(row)
        self.forget(reg.name)
        return new

    async def delete(self, reg: Reg) -> bool:
        async with self.sessions.begin() as session:
            result = await session.execute(
                delete(Registration).where(Registration.name == reg.name, Registration.secret == reg.secret.hex())
            )
        self.forget(reg.name)
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def touch(self, names: set[str], now: float | None = None) -> None:
        """Push the lease expiry of names that had pollers forward (lease counts from last activity)."""
        if not names:
            return
        now = time.time() if now is None else now
        ordered = sorted(names)
        async with self.sessions.begin() as session:
            # In chunks: one bound parameter per name, and PostgreSQL's protocol takes at most
            # 32,767 per statement, fewer than the pollers one process may hold.
            for i in range(0, len(ordered), TOUCH_CHUNK):
                await session.execute(
                    update(Registration)
                    .where(Registration.name.in_(ordered[i : i + TOUCH_CHUNK]))
                    .values(expires_at=now + Registration.lease_seconds)
                )
        for name in ordered:  # what is cached here follows (no reload when the old expiry passes)
            hit = self._cache.get(name)
            if hit is not None and hit[0] is not None:
                self._cache[name] = (replace(hit[0], expires_at=now + hit[0].lease_seconds), hit[1])

    async def sweep(self, now: float | None = None) -> list[str]:
        """Delete registrations left dormant past their lease; returns their names.

        Safe with many processes: each one touches its active names before sweeping, and the
        DELETE repeats the condition, so a row refreshed in between survives.
        """
        now = time.time() if now is None else now
        async with self.sessions.begin() as session:
            names = list((await session.scalars(select(Registration.name).where(Registration.expires_at < now))).all())
            if names:
                await session.execute(
                    delete(Registration).where(Registration.name.in_(names), Registration.expires_at < now)
                )
        for name in names:
            self.forget(name)
        return names

    async def listing(self, limit: int = 1000) -> tuple[int, list[Reg]]:
        from sqlalchemy import func

        async with self.sessions() as session:
            count = int(await session.scalar(select(func.count()).select_from(Registration)) or 0)
            rows = (await session.scalars(select(Registration).order_by(Registration.name).limit(limit))).all()
        return count, [_snapshot(r) for r in rows]
