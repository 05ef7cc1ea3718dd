from __future__ import annotations

import pytest

pytestmark = pytest.mark.anyio


async def test_healthz_answers_once_serving(client):
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.text == "ok\n"


async def test_metrics_are_prometheus_text(client):
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")


async def test_unknown_path_is_404(client):
    assert (await client.get("/no/such/thing")).status_code == 404
