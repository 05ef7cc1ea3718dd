"""Publishers' ``Idempotency-Key``s (draft-ietf-httpapi-idempotency-key-header): a retry is stored once.

A publisher whose fat ping was cut off (a timeout, a killed process, a lost connection) cannot tell
whether it was stored, and retries. With the same ``Idempotency-Key`` the retry finds the key the
first attempt committed *in the same transaction as its payload* (:func:`remember`), so it is
answered as the first was and nothing is queued twice: subscribers see one ``webhook-id``. A first
attempt that never committed left no key, so its retry is stored as new.

A key is remembered per topic (its row is a digest of the topic and the key): only a publisher
allowed to publish the topic can meet another's key, and the same key on two topics is two
publishes. The request's fingerprint (its Content-Type and body) is kept beside it: the same key
with another request is refused (422, as the draft says), never taken for the first. Keys are kept
``--publish-idempotency-retention`` seconds (:func:`prune`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hub.models import PublishKey

MAX_KEY_LENGTH = 255


@dataclass(frozen=True)
class Prior:
    """What a key's first publish was: its request's fingerprint and the status it was answered."""

    fingerprint: str
    status: int


def digest(topic: str, key: str) -> str:
    return hashlib.sha256(b"%s\n%s" % (topic.encode(), key.encode())).hexdigest()


def fingerprint(content_type: str, body: bytes) -> str:
    h = hashlib.sha256(content_type.encode("latin-1", "replace"))
    h.update(b"\n")
    h.update(body)
    return h.hexdigest()


async def prior(s: AsyncSession, key_digest: str) -> Prior | None:
    """The key's first publish, if it committed, read in the caller's transaction."""
    row = (
        await s.execute(select(PublishKey.fingerprint, PublishKey.status).where(PublishKey.digest == key_digest))
    ).first()
    return Prior(row[0], row[1]) if row is not None else None


async def find(sessions: async_sessionmaker[AsyncSession], key_digest: str) -> Prior | None:
    async with sessions() as s:
        return await prior(s, key_digest)


def remember(s: AsyncSession, key_digest: str, request_fingerprint: str, status: int, now: float) -> None:
    """Add the key to the caller's transaction: it commits with the payload, or not at all. Two
    first attempts racing both pass :func:`prior`; the primary key lets one commit, and the other's
    ``IntegrityError`` sends it to read what the winner stored."""
    s.add(PublishKey(digest=key_digest, fingerprint=request_fingerprint, status=status, created_at=now))


async def prune(sessions: async_sessionmaker[AsyncSession], before: float) -> int:
    """Forget keys remembered before ``before`` (the retention window has passed)."""
    async with sessions.begin() as s:
        result = await s.execute(delete(PublishKey).where(PublishKey.created_at < before))
    return int(getattr(result, "rowcount", 0) or 0)
