"""The hub's rows, one module per noun. Every function is one unit of work (or runs in the caller's).

- :mod:`hub.store.subscriptions`: verified (topic, callback) pairs: activate, deactivate, expire,
  and what a subscribe's checks read (:func:`outlook`);
- :mod:`hub.store.deliveries`: the outbox: a payload stored once and a delivery row per subscriber
  (:func:`enqueue`), claimed by workers (:func:`claim`), settled (:func:`record`), replayed;
- :mod:`hub.store.workers`: outbox workers and their heartbeats: a claim holds while its worker lives;
- :mod:`hub.store.topics`: topic rows (versions, publish pings, the per-topic lock) and the feed
  entries already distributed.

Row states are :class:`hub.models.SubscriptionState` and :class:`hub.models.DeliveryState`.
Callers use the package (``from hub import store``; ``store.claim(...)``): these names are its API.
"""

from __future__ import annotations

from hub.store._sql import dialect, writing
from hub.store.deliveries import (
    Claimed,
    Enqueued,
    Outcome,
    Settled,
    cancel_pending,
    claim,
    claim_payload,
    enqueue,
    hurry,
    oldest_retained,
    payloads,
    pending_count,
    prune,
    record,
    release,
    release_worker,
    renew,
    replay,
)
from hub.store.subscriptions import (
    ACTIVE,
    Activation,
    activate,
    activate_many,
    client_share,
    deactivate,
    expire_leases,
    find,
    host_of,
    outlook,
)
from hub.store.topics import (
    bump_topic,
    ensure_sup_source,
    ensure_topic,
    known_entries,
    lock_topic,
    prune_topics,
    record_pings,
    remember_entries,
    topic_id,
)
from hub.store.workers import DeadWorker, beat, dead, judge_node, retire

__all__ = [
    "ACTIVE",
    "Activation",
    "Claimed",
    "DeadWorker",
    "Enqueued",
    "Outcome",
    "Settled",
    "activate",
    "activate_many",
    "beat",
    "bump_topic",
    "cancel_pending",
    "client_share",
    "claim",
    "claim_payload",
    "dead",
    "deactivate",
    "dialect",
    "enqueue",
    "ensure_topic",
    "expire_leases",
    "find",
    "host_of",
    "hurry",
    "judge_node",
    "known_entries",
    "lock_topic",
    "oldest_retained",
    "outlook",
    "payloads",
    "pending_count",
    "prune",
    "prune_topics",
    "record",
    "record_pings",
    "release",
    "release_worker",
    "remember_entries",
    "renew",
    "replay",
    "retire",
    "writing",
    "topic_id",
    "ensure_sup_source",
]
