"""Settings: one frozen value built from flags / ``REVERSEHUB_*`` variables and passed down.

Nothing reads the environment after start: ``cli.py`` builds a :class:`Settings` and hands it to
``create_app``; tests build their own with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

MiB = 1024 * 1024
# Seconds a graceful shutdown (SIGTERM) gives requests in flight and the hub's drain
# (reversehub.server.serve, hub.grace).
SHUTDOWN_GRACE = 10.0
# Heartbeats an outbox worker may miss before others take its claims over (Settings.outbox_stale).
OUTBOX_STALE_BEATS = 5


@dataclass(frozen=True)
class Settings:
    # Where and how we serve.
    host: str = "127.0.0.1"
    port: int = 8000
    # The listener (reversehub.server.protocol): seconds from the first byte of a request head to its
    # end (408 after), bytes of a request head (431 above), and open connections per process (503
    # past it; 0: no cap). `serve` lowers the cap to what its file-descriptor limit leaves room for.
    request_head_timeout: float = 10.0
    max_request_head_size: int = 64 * 1024
    max_connections: int = 16_384
    # The origin (scheme://host[:port], optionally a path prefix) by which the world reaches us.
    # Relay public URLs and the hub's own links are built from it. None: http://host:port.
    public_url: str | None = None
    # Host-based relay names (--relay-domain D): a name's public URL is SCHEME://NAME.D[:PORT]/ (scheme
    # and port from the public URL), so every relay application gets an origin of its own. None:
    # path-based /relay/NAME/ on the public origin (local use).
    relay_domain: str | None = None
    # TLS on our own listener (uvicorn's options): a PEM certificate chain and its private key (the key
    # may also sit in the certificate file). With a certificate the default public URL is https.
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    database_url: str = "sqlite:///./reversehub.db"
    redis_url: str | None = None
    # Migrate the schema to head at start (the embedded default; operators may prefer `db upgrade`).
    migrate: bool = True

    # SSRF guard: refuse callbacks and topic fetches to loopback/private addresses unless set.
    allow_private_networks: bool = False

    # Relay timeouts (seconds), DESIGN.md "timeouts".
    poll_timeout: float = 30.0
    unavailable_timeout: float = 5.0
    reply_timeout: float = 60.0
    # Relay leases (seconds): what a registration asks for is clamped into [min, max].
    lease_default: float = 3600.0
    lease_min: float = 10.0
    lease_max: float = 7 * 24 * 3600.0
    # Relay limits.
    max_body_size: int = 10 * MiB
    max_queued_per_name: int = 1000
    max_header_count: int = 100
    max_header_size: int = 64 * 1024
    max_pipeline: int = 32
    # PTTH connections (relay.ptth): requests in flight on one (1: one at a time), and how many may
    # be open per name and per process (0: no bound; past one, 503).
    ptth_pipeline: int = 8
    max_ptth_per_name: int = 64
    max_ptth_connections: int = 10000
    # Bytes of relayed requests this process holds until they are answered, per name and in all
    # (0: no bound). Past one, a requester gets 503 with Retry-After before its body is read.
    max_queued_bytes_per_name: int = 64 * MiB
    max_queued_bytes: int = 256 * MiB
    # Mailbox names (relay.mailbox): stored requests per name (count and bytes, 507 past either) and
    # bytes in all (503 past it), and how long a stored request and its response are kept (seconds).
    mailbox_max_per_name: int = 1000
    mailbox_max_bytes_per_name: int = 64 * MiB
    mailbox_max_bytes: int = 1024 * MiB
    mailbox_retention: float = 7 * 24 * 3600.0
    # The request inspector (relay.inspector): the last N exchanges kept per name, the body of each
    # request and response cut at this many bytes.
    inspector_requests: int = 50
    inspector_max_body: int = 64 * 1024

    # Hub leases (seconds), W3C WebSub 5.1: default 10 days, never perpetual.
    hub_lease_default: int = 10 * 24 * 3600
    hub_lease_min: int = 60
    hub_lease_max: int = 30 * 24 * 3600
    signature_algorithm: str = "sha256"
    # Delivery: concurrency, per-host fairness, retry horizon.
    delivery_concurrency: int = 256
    delivery_per_host: int = 32
    delivery_timeout: float = 10.0
    delivery_max_age: float = 24 * 3600.0
    verify_timeout: float = 10.0
    # Intent verification GETs at once, in all, per callback host and per client (not for exempt
    # clients), and how many may wait per host and per client (past it, 503): a host that never
    # answers, or a client with many of them, holds only its own share (hub.fairness).
    verify_concurrency: int = 64
    verify_per_host: int = 4
    verify_waiting_per_host: int = 1000
    verify_per_client: int = 16
    verify_waiting_per_client: int = 2000
    # Seconds to resolve and connect for any outbound request (verification, fetch, delivery), within
    # its own timeout: a callback that accepts nothing holds a verification slot this long, not 10 s.
    connect_timeout: float = 3.0
    fetch_timeout: float = 10.0
    max_topic_size: int = 10 * MiB
    # How long the outbox keeps delivered rows for replay (seconds).
    delivery_retention: float = 7 * 24 * 3600.0
    # How long a publish's Idempotency-Key is remembered (seconds): a retry within it is stored once.
    publish_idempotency_retention: float = 24 * 3600.0
    # Feed polling (seconds, --poll-min-interval / --poll-max-interval): a topic nobody pings is
    # polled adaptively between these bounds; a pinged one (or one a SUP document covers) at the
    # maximum, as a safety net; a failing fetch is retried after a backoff from min up to max.
    poll_min_interval: float = 60.0
    poll_max_interval: float = 3600.0
    # Hub delivery retries: first retry after about delivery_retry_base s (jittered), doubling up to
    # delivery_retry_max.
    delivery_retry_base: float = 1.0
    delivery_retry_max: float = 3600.0
    # The lease of a claim (docs/delivery.md): a live worker renews what it holds; a claim nobody
    # renews (its worker cannot be judged, or forgot it) is taken over after this many seconds.
    delivery_claim_seconds: float = 120.0
    # Outbox workers renew a heartbeat this often (seconds); one silent for OUTBOX_STALE_BEATS
    # heartbeats is dead, and its claims are taken over at once (hub.store.workers).
    outbox_heartbeat: float = 1.0
    # Safety-net scan of the outbox when no wake-up came (seconds).
    outbox_scan_interval: float = 2.0

    # Security (docs/security.md). Tokens are kept only as "sha256:<hex>" digests
    # (__post_init__ hashes a plain value at once); operators may also give the digest itself.
    # Tuple fields are named like their repeatable flag (--topic-token, --allow-topic, ...).
    admin_token: str | None = None
    registration_token: str | None = None
    publish_token: str | None = None
    topic_token: tuple[str, ...] = ()  # "TOPIC_PATTERN=TOKEN": only holders may publish matching topics
    reserve_name: tuple[str, ...] = ()  # "NAME_PATTERN=TOKEN": only that registration token may claim it
    trusted_networks: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # fat pings without a publish token
    max_form_size: int = 64 * 1024  # the largest form body the hub and the relay read (413 above)
    # Subscriber policy: fnmatch patterns, or regular expressions prefixed "re:" (reversehub.core.policy).
    allow_topic: tuple[str, ...] = ()
    deny_topic: tuple[str, ...] = ()
    allow_callback: tuple[str, ...] = ()
    deny_callback: tuple[str, ...] = ()
    # Rate limits (reversehub.core.limits): fixed windows of rate_limit_window s (0 disables them all),
    # "CLASS[:KEY]=N" overrides of the defaults, and client networks that are never limited.
    rate_limit_window: float = 10.0
    rate_limit: tuple[str, ...] = ()
    rate_limit_exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    # Caps (0: none).
    max_registrations: int = 100_000
    # The share of max_registrations one client (an address, an IPv6 /64) may hold; clients in
    # rate_limit_exempt have none.
    max_registrations_per_client: int = 1_000
    max_subscriptions_per_callback_host: int = 100_000
    # The share of one callback host's subscriptions that one client (as above) may have asked for.
    max_subscriptions_per_callback_host_per_client: int = 10_000
    max_pending_per_subscription: int = 10_000
    # Dashboard: seconds between two samples of the live charts.
    dashboard_interval: float = 1.0
    # Where the dashboard and its API listen with path-based relay names: an origin of their own,
    # since every /relay/NAME/ page shares the main one ("127.0.0.1:0": any free port).
    admin_listen: str = "127.0.0.1:8001"
    # How long a dashboard session (reversehub.server.dashboard.auth) lasts, in seconds.
    admin_session_seconds: float = 12 * 3600.0

    # Origins whose pages may use the gateway, request and private URLs, the hub and the JS library
    # (reversehub.server.cors): "scheme://host[:port]" or "*". Empty: no CORS headers at all.
    cors_origins: tuple[str, ...] = ()

    # Worker processes (`--workers N`, needs the Redis broker).
    workers: int = 1
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Secrets are kept only as digests: a dump of the settings (or of memory) shows no token.
        for name in ("admin_token", "registration_token", "publish_token"):
            object.__setattr__(self, name, token_digest(getattr(self, name)))
        for name in ("topic_token", "reserve_name"):
            object.__setattr__(self, name, tuple(digest_pair(pair) for pair in getattr(self, name)))

    @property
    def public_origin(self) -> str:
        """The public URL without a trailing slash; by default the address we listen on."""
        if self.public_url:
            return self.public_url.rstrip("/")
        scheme = "https" if self.ssl_certfile else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def outbox_stale(self) -> float:
        """Seconds without a heartbeat after which an outbox worker is dead and its claims free."""
        return OUTBOX_STALE_BEATS * self.outbox_heartbeat


def token_digest(token: str | None) -> str | None:
    """``"sha256:<hex>"`` for a plain token; a value already in that form is kept as it is."""
    if token is None or (token.startswith("sha256:") and len(token) == 71):
        return token
    return hash_token(token)


def hash_token(token: str) -> str:
    """``"sha256:<hex>"``, always (what a client presents is hashed even if it looks like a digest)."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def digest_pair(pair: str) -> str:
    pattern, sep, token = pair.rpartition("=")
    if not sep or not pattern or not token:
        raise ValueError(f"expected PATTERN=TOKEN, got {pair.split('=')[0]!r}=…")
    return f"{pattern}={token_digest(token)}"
