"""Live charts: per-second rates read from the app's Prometheus registry, sent as server-sent events.

Nothing is counted twice: the relay and the hub already count what they do on ``services.metrics``;
a :class:`Sampler` sums the families of each series and turns the totals into rates between two
samples (and a histogram into its mean over the interval, for latency). Each dashboard connection
has its own sampler, so a chart shows exactly what happened since its previous point.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse


@dataclass(frozen=True)
class Series:
    key: str
    family: str  # the metric family's name (as prometheus_client reports it: no "_total")
    kind: str  # "counter" (a rate per second) or "histogram" (mean of the interval, in milliseconds)
    labels: tuple[tuple[str, str], ...] = ()  # only samples with these label values


# The families the relay (relay.service.RelayMetrics), the hub (hub.metrics) and the rate limiter
# register on services.metrics.
SERIES = (
    Series("publishes", "hub_publishes", "counter"),
    Series("deliveries", "hub_deliveries", "counter", (("outcome", "delivered"),)),
    Series("failures", "hub_deliveries", "counter", (("outcome", "failed"),)),
    Series("relay_requests", "relay_requests", "counter"),
    Series("relay_latency_ms", "relay_latency_seconds", "histogram"),
    Series("rate_limited", "reversehub_rate_limited", "counter"),
)


def totals(registry: CollectorRegistry) -> dict[str, tuple[float, float]]:
    """Per series: (total, count) — for a counter (sum of its ``_total`` samples, 0); for a
    histogram (sum of its ``_sum`` samples, sum of its ``_count`` samples)."""
    out = {s.key: (0.0, 0.0) for s in SERIES}
    for family in registry.collect():
        for series in SERIES:
            if family.type != series.kind or family.name != series.family:
                continue
            total, count = out[series.key]
            for sample in family.samples:
                if any(sample.labels.get(k) != v for k, v in series.labels):
                    continue
                if series.kind == "counter" and sample.name.endswith("_total"):
                    total += sample.value
                elif sample.name.endswith("_sum"):
                    total += sample.value
                elif sample.name.endswith("_count"):
                    count += sample.value
            out[series.key] = (total, count)
    return out


class Sampler:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._previous: tuple[float, dict[str, tuple[float, float]]] | None = None

    def sample(self) -> dict[str, float]:
        """Rates since the previous sample (0 on the first), and the running totals."""
        now, current = time.monotonic(), totals(self.registry)
        point: dict[str, float] = {"t": time.time()}
        before_t, before = self._previous if self._previous else (now, current)
        elapsed = max(now - before_t, 1e-9)
        for series in SERIES:
            total, count = current[series.key]
            old_total, old_count = before[series.key]
            if series.kind == "counter":
                point[series.key] = round((total - old_total) / elapsed, 3) if self._previous else 0.0
                point[series.key + "_total"] = total
            else:
                n = count - old_count
                point[series.key] = round((total - old_total) / n * 1000, 3) if n > 0 else 0.0
        self._previous = (now, current)
        return point


def event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def stream(request: Request) -> Response:
    """``GET /dashboard/events``: a ``rates`` event every ``--dashboard-interval`` seconds.

    The stream ends when the app shuts down (the page reads it with ``fetch``, since it must send
    ``Authorization``, and reconnects 2 s after it ends): at once if the server sets
    ``app.state.stopping`` (an event) when told to stop, else at the next sample after the lifespan ended.
    """
    state = request.app.state
    services = state.services
    interval = state.settings.dashboard_interval
    sampler = Sampler(services.metrics)

    async def events() -> AsyncIterator[str]:
        yield "retry: 2000\n\n"
        yield event("rates", sampler.sample())
        while state.services is services:
            stopping = getattr(state, "stopping", None)
            with anyio.move_on_after(interval) as tick:
                await (stopping.wait() if stopping is not None else anyio.sleep_forever())
            if not tick.cancelled_caught:
                return  # the server is stopping
            yield event("rates", sampler.sample())

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
