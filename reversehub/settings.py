"""Settings: one frozen value built from flags / ``REVERSEHUB_*`` variables and passed down.

Nothing reads the environment after start: ``cli.py`` builds a :class:`Settings` and hands it to
``create_app``; tests build their own with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    # Where and how we serve.
    host: str = "127.0.0.1"
    port: int = 8000
    # The origin (scheme://host[:port], optionally a path prefix) by which the world reaches us.
    # Relay public URLs and the hub's own links are built from it. None: http://host:port.
    public_url: str | None = None
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
    fetch_timeout: float = 10.0
    max_topic_size: int = 10 * MiB
    # How long the outbox keeps delivered rows for replay (seconds).
    delivery_retention: float = 7 * 24 * 3600.0
    # Feed polling for topics nobody pings: adaptive between these bounds (seconds).
    poll_min_interval: float = 60.0
    poll_max_interval: float = 3600.0

    # Worker processes (`--workers N`, needs the Redis broker).
    workers: int = 1
    log_level: str = "info"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def public_origin(self) -> str:
        """The public URL without a trailing slash; by default the address we listen on."""
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"
