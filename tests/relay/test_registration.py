"""Registration, management and the gateway's state (spec "Registration", "Managing registrations")."""

from __future__ import annotations

import anyio
import pytest

from tests.relay.helpers import links, register

pytestmark = pytest.mark.anyio


async def test_new_registration_is_201_with_links_and_location(client):
    r = await client.post("/reversehttp", data={"name": "alice", "token": "t", "lease": "600"})
    assert r.status_code == 201
    # Separate Link lines with a quoted rel: what reversehttp.py and httpd.js parse.
    lines = r.headers.get_list("link")
    assert len(lines) == 2
    assert any(line.endswith('; rel="first"') for line in lines)
    found = links(r)
    assert found["related"] == "http://hub.test/relay/alice/"
    assert found["first"].startswith("http://hub.test/reversehttp/r/")
    assert r.headers["location"].startswith("http://hub.test/reversehttp/p/")


async def test_refresh_is_204_and_names_are_case_insensitive(client):
    first = await register(client, "Bob")
    r = await client.post("/reversehttp", data={"name": "BOB", "token": "t"})
    assert r.status_code == 204
    assert links(r)["related"] == "http://hub.test/relay/bob/" == first["related"]
    assert r.headers["location"] == first["location"]


@pytest.mark.parametrize("name", ["", "-bad", "bad-", "a" * 64, "has space", "dot.ted", "ünï", "under_score"])
async def test_bad_dns_label_is_400(client, name):
    r = await client.post("/reversehttp", data={"name": name, "token": "t"})
    assert r.status_code == 400
    assert r.text.strip()


async def test_good_labels(client):
    for name in ["a", "a" * 63, "9lives", "x-y-z"]:
        assert (await client.post("/reversehttp", data={"name": name})).status_code == 201


@pytest.mark.parametrize("lease", ["abc", "-5", "1.5", ""])
async def test_bad_lease_is_400(client, lease):
    assert (await client.post("/reversehttp", data={"name": "carol", "lease": lease})).status_code == 400


async def test_lease_is_clamped(client, settings):
    urls = await register(client, "dave", lease="1")
    doc = (await client.get(urls["location"], headers={"accept": "application/json"})).json()
    assert doc["lease"] == int(settings.lease_min)
    urls = await register(client, "dave", lease=str(10**9))
    doc = (await client.get(urls["location"], headers={"accept": "application/json"})).json()
    assert doc["lease"] == int(settings.lease_max)


async def test_token_mismatch_is_403_and_missing_token_is_first_come_first_served(client):
    await register(client, "erin", token="one")
    assert (await client.post("/reversehttp", data={"name": "erin", "token": "two"})).status_code == 403
    assert (await client.post("/reversehttp", data={"name": "frank"})).status_code == 201
    assert (await client.post("/reversehttp", data={"name": "frank"})).status_code == 403
    assert (await client.post("/reversehttp", data={"name": "frank", "token": "-"})).status_code == 403


async def test_dash_token_of_the_original_clients_refreshes(client):
    assert (await client.post("/reversehttp", data={"name": "python", "token": "-"})).status_code == 201
    assert (await client.post("/reversehttp", data={"name": "python", "token": "-"})).status_code == 204


async def test_malformed_registration_bodies_are_4xx(client):
    assert (await client.post("/reversehttp", content=b"\xff\xfe\x00")).status_code == 400
    assert (await client.post("/reversehttp", data={"token": "x"})).status_code == 400
    big = {"name": "x", "pad": "a" * 100_000}
    assert (await client.post("/reversehttp", data=big)).status_code == 413


async def test_private_url_representations(client):
    urls = await register(client, "gina", lease="600")
    r = await client.get(urls["location"])
    assert r.headers["content-type"].startswith("application/x-www-form-urlencoded")
    assert "name=gina" in r.text and "lease=600" in r.text
    assert (await client.get(urls["location"], headers={"accept": "application/json"})).json()["name"] == "gina"
    r = await client.get(urls["location"], headers={"accept": "text/html"})
    assert r.headers["content-type"].startswith("text/html") and "gina" in r.text


async def test_forged_private_url_is_404(client):
    urls = await register(client, "hank")
    cap = urls["location"].rsplit("/", 1)[1]
    forged = cap[:-8] + ("A" if cap[-8] != "A" else "B") + cap[-7:]
    for url in ["/reversehttp/p/nope", f"/reversehttp/p/{forged}", "/reversehttp/p/" + "A" * 400]:
        assert (await client.get(url)).status_code == 404


async def test_put_reconfigures_lease_and_token(client):
    urls = await register(client, "ivan", token="old", lease="600")
    r = await client.put(urls["location"], data={"lease": "700", "token": "new", "name": "ignored"})
    assert r.status_code == 204
    assert (await client.get(urls["location"], headers={"accept": "application/json"})).json() == {
        "name": "ivan",
        "lease": 700,
        "public_url": "http://hub.test/relay/ivan/",
        "expires_in": 700,
    }
    assert (await client.post("/reversehttp", data={"name": "ivan", "token": "old"})).status_code == 403
    assert (await client.post("/reversehttp", data={"name": "ivan", "token": "new"})).status_code == 204
    assert (await client.put(urls["location"], data={"lease": "x"})).status_code == 400


async def test_delete_is_204_then_404_and_kills_old_capabilities(client):
    urls = await register(client, "judy")
    assert (await client.delete(urls["location"])).status_code == 204
    assert (await client.delete(urls["location"])).status_code == 404
    assert (await client.get(urls["location"])).status_code == 404
    assert (await client.get(urls["first"])).status_code == 404
    assert (await client.get("/relay/judy/")).status_code == 404
    again = await register(client, "judy", token="other")
    assert again["location"] != urls["location"]
    assert (await client.get(urls["first"])).status_code == 404


async def test_delete_ends_polls_in_flight_with_410(client):
    urls = await register(client, "kate")
    result = {}

    async def poll():
        result["r"] = await client.get(urls["first"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(poll)
        await _wait_pollers(client, 1)
        assert (await client.delete(urls["location"])).status_code == 204
    assert result["r"].status_code == 410


async def test_gateway_state_hides_capabilities(client):
    urls = await register(client, "liam", token="sekrit")
    for accept in ["application/json", "text/html"]:
        r = await client.get("/reversehttp", headers={"accept": accept})
        assert r.status_code == 200
        assert "liam" in r.text
        for secret in (urls["location"].rsplit("/", 1)[1], urls["first"].rsplit("/", 1)[1], "sekrit"):
            assert secret not in r.text
    assert (await client.get("/reversehttp", headers={"accept": "application/json"})).json()["registrations"] == 1


async def test_dormant_registration_is_swept_after_its_lease(app_client):
    app, client = app_client
    relay = app.state.relay
    urls = await register(client, "mike", lease="60")
    await register(client, "nora", lease="60")
    import time

    relay._active.add("nora")  # nora had a poller since the last sweep
    deleted = await relay.sweep(now=time.time() + 61)
    assert deleted == ["mike"]
    assert (await client.get(urls["location"])).status_code == 404
    assert (await client.get("/relay/mike/")).status_code == 404


async def test_polled_leases_are_extended_each_quarter_lease_and_once_more_when_dormant(app_client):
    app, client = app_client
    relay = app.state.relay
    await register(client, "pia", lease="400")
    import time

    async def expires_at() -> float:
        reg = await relay.registry._load("pia")  # the row, not the cache
        assert reg is not None
        return reg.expires_at

    t = time.time()
    relay._active.add("pia")
    await relay.sweep(now=t)
    assert await expires_at() == t + 400
    relay._active.add("pia")
    await relay.sweep(now=t + 99)  # still polled, under a quarter lease since: the row is left alone
    assert await expires_at() == t + 400
    relay._active.add("pia")
    await relay.sweep(now=t + 100)
    assert await expires_at() == t + 500
    await relay.sweep(now=t + 110)  # no poll since the last sweep: one last extension, from now
    assert await expires_at() == t + 510
    await relay.sweep(now=t + 120)  # dormant: the lease runs out from there
    assert await expires_at() == t + 510
    assert await relay.sweep(now=t + 511) == ["pia"]


async def test_a_failed_lease_extension_is_tried_again_at_the_next_sweep(app_client, monkeypatch):
    app, client = app_client
    relay = app.state.relay
    await register(client, "quin", lease="400")
    import time

    touch = relay.registry.touch

    async def broken(names, now=None):
        raise RuntimeError("database unavailable")

    t = time.time()
    relay._active.add("quin")
    monkeypatch.setattr(relay.registry, "touch", broken)
    with pytest.raises(RuntimeError):
        await relay.sweep(now=t)
    monkeypatch.setattr(relay.registry, "touch", touch)
    relay._active.add("quin")  # still polled: not extended yet, so due now
    await relay.sweep(now=t + 1)
    reg = await relay.registry._load("quin")
    assert reg is not None and reg.expires_at == t + 401


async def test_registrations_survive_a_restart(make_app):
    _, client = await make_app()
    urls = await register(client, "olga")
    _, client2 = await make_app()  # a second app on the same database: a restart or another process
    assert (await client2.get(urls["location"])).status_code == 200
    assert (await client2.post("/reversehttp", data={"name": "olga", "token": "t"})).status_code == 204
    assert (await client2.get(urls["first"])).status_code == 204  # the old request URL still polls


async def _wait_pollers(client, n: int) -> None:
    from tests.support import wait_for

    async def ready() -> bool:
        r = await client.get("/metrics")
        return f"relay_pollers_waiting {float(n)}" in r.text

    await wait_for(ready)


async def test_concurrent_first_registrations_of_one_name(client):
    codes: list[int] = []

    async def one(token: str) -> None:
        codes.append((await client.post("/reversehttp", data={"name": "race", "token": token})).status_code)

    async with anyio.create_task_group() as tg:
        for token in ["a", "b", "a", "b", "a", "b"]:
            tg.start_soon(one, token)
    assert codes.count(201) == 1
    assert 500 not in codes and set(codes) <= {201, 204, 403}


async def test_registration_cap_refuses_new_names_but_refreshes_existing(make_app):
    _, client = await make_app(max_registrations=2)

    async def post(name):
        return await client.post("/reversehttp", data={"name": name, "token": "t"})

    assert (await post("one")).status_code == 201
    assert (await post("two")).status_code == 201
    full = await post("three")
    assert full.status_code == 503
    assert "too many registrations" in full.text
    assert (await post("one")).status_code == 204


async def _refresh(client, name: str, answers: dict[str, int]) -> None:
    answers["refresh"] = (await client.post("/reversehttp", data={"name": name, "token": "t"})).status_code


async def _delete(client, private: str, answers: dict[str, int]) -> None:
    answers["delete"] = (await client.delete(private)).status_code


async def test_a_refresh_racing_the_delete_of_its_name_is_never_a_500(client):
    """A poller re-registers its name (a refresh) while its owner deletes it: whichever lands first,
    each request gets its own answer (201/204 for the registration, 204/404 for the delete), never
    a 500 from a row that vanished under the refresh. Run a hundred times: the race is timing."""
    for i in range(100):
        name = f"race{i}"
        r = await client.post("/reversehttp", data={"name": name, "token": "t"})
        assert r.status_code == 201
        answers: dict[str, int] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(_refresh, client, name, answers)
            tg.start_soon(_delete, client, r.headers["location"], answers)
        assert answers["refresh"] in (201, 204) and answers["delete"] in (204, 404), answers
