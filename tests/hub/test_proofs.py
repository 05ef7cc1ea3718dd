"""Status and replay proofs (issue 13, L1, L4, M7), and numbers in hub parameters.

- L1: ``²`` passes ``str.isdigit`` and ``int`` refuses it; ``int`` refuses 5,000 digits; a non-ASCII
  ``hub.signature`` made ``hmac.compare_digest`` raise. Each was a 500; each is a 400 (or the 403 of
  a wrong proof) now.
- L4: "no such subscription", "no secret" and "wrong proof" are one answer.
- M7: a proof names its action and parameters, is used once, and replays have budgets.
"""

from __future__ import annotations

import time

import pytest

from hub.signing import ownership_proof
from tests.hub.conftest import SUB, subscribe
from tests.hub.peers import Document

pytestmark = pytest.mark.anyio

TOPIC = "http://pub.test/feed"
CALLBACK = SUB + "/cb"


def _params(action: str, secret: str = "k", callback: str = CALLBACK, ts: int | None = None, *extra: str) -> dict:
    ts = int(time.time()) if ts is None else ts
    return {
        "hub.callback": callback,
        "hub.topic": TOPIC,
        "hub.timestamp": str(ts),
        "hub.signature": ownership_proof(secret, action, callback, TOPIC, ts, *extra),
    }


def _replay_form(secret: str = "k", since: str = "0", ts: int | None = None) -> dict:
    return {**_params("replay", secret, CALLBACK, ts, since), "hub.since": since}


@pytest.fixture
async def owned(hub, peer):
    """A hub with one subscription that has a secret (``k``) and one without (``/open``)."""
    app, client = hub
    peer.documents["/feed"] = Document("text/plain", b"x")
    await subscribe(client, peer, TOPIC, CALLBACK, secret="k")
    await subscribe(client, peer, TOPIC, SUB + "/open")
    return app, client


# L1 ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seconds", ["²", "٣", "1" * 5000, "-1", "60.0", "abc"])
async def test_sup_seconds_that_are_not_a_whole_number_get_400(hub, seconds):
    _, client = hub
    r = await client.get("/sup", params={"seconds": seconds})
    assert r.status_code == 400 and "seconds must be a whole number" in r.text


async def test_sup_still_serves_its_periods(hub):
    _, client = hub
    assert (await client.get("/sup", params={"seconds": "300"})).json()["period"] == 300
    assert (await client.get("/sup", params={"seconds": "7"})).json()["period"] == 60  # not offered: the default
    assert (await client.get("/sup")).json()["period"] == 60


@pytest.mark.parametrize("timestamp", ["²", "1" * 5000, "１２"])
async def test_status_timestamp_that_is_not_a_whole_number_gets_400(owned, timestamp):
    _, client = owned
    r = await client.get("/hub/status", params={**_params("status"), "hub.timestamp": timestamp})
    assert r.status_code == 400 and "hub.timestamp" in r.text


@pytest.mark.parametrize("since", ["²", "9" * 5000])
async def test_replay_since_that_is_not_a_whole_number_gets_400(owned, since):
    _, client = owned
    r = await client.post("/hub/replay", data={**_replay_form(), "hub.since": since})
    assert r.status_code == 400 and "hub.since" in r.text


@pytest.mark.parametrize("signature", ["é", "é" * 64, "\x00", "a" * 5000])
async def test_a_non_ascii_or_odd_signature_is_a_wrong_proof(owned, signature):
    _, client = owned
    r = await client.get("/hub/status", params={**_params("status"), "hub.signature": signature})
    assert r.status_code == 403
    r = await client.post("/hub/replay", data={**_replay_form(), "hub.signature": signature})
    assert r.status_code == 403


# L4 ----------------------------------------------------------------------------------------------
async def test_status_answers_alike_for_no_subscription_no_secret_and_a_wrong_proof(owned):
    _, client = owned
    answers = [
        await client.get("/hub/status", params=_params("status", "k", SUB + "/nobody")),  # no such pair
        await client.get("/hub/status", params=_params("status", "", SUB + "/open")),  # no secret
        await client.get("/hub/status", params=_params("status", "wrong")),  # wrong proof
        await client.get("/hub/status", params=_params("status", ts=int(time.time()) - 3600)),  # expired
    ]
    assert {(r.status_code, r.text, tuple(sorted(r.headers.keys()))) for r in answers} == {
        (answers[0].status_code, answers[0].text, tuple(sorted(answers[0].headers.keys())))
    }
    assert answers[0].status_code == 403
    assert (await client.get("/hub/status", params=_params("status"))).status_code == 200


# M7 ----------------------------------------------------------------------------------------------
async def test_a_status_proof_does_not_order_a_replay(owned, peer):
    _, client = owned
    status = _params("status")
    assert (await client.get("/hub/status", params=status)).status_code == 200
    # The same signature, which a log of status URLs shows, on /hub/replay:
    r = await client.post("/hub/replay", data={**status, "hub.since": "0"})
    assert r.status_code == 403


async def test_a_replay_proof_is_bound_to_its_since(owned):
    _, client = owned
    form = _replay_form(since="5")
    r = await client.post("/hub/replay", data={**form, "hub.since": "0"})
    assert r.status_code == 403
    assert (await client.post("/hub/replay", data=form)).status_code == 202


async def test_a_proof_is_used_once(owned):
    _, client = owned
    status = _params("status")
    assert (await client.get("/hub/status", params=status)).status_code == 200
    again = await client.get("/hub/status", params=status)
    assert again.status_code == 403 and "used already" in again.text
    now = int(time.time())
    form = _replay_form(ts=now)
    assert (await client.post("/hub/replay", data=form)).status_code == 202
    assert (await client.post("/hub/replay", data=form)).status_code == 403
    # A new timestamp makes a new proof.
    assert (await client.post("/hub/replay", data=_replay_form(ts=now - 1))).status_code == 202


async def test_replays_have_budgets_per_subscription_and_per_client(make_hub, peer):
    app, client = await make_hub(
        rate_limit_window=3600.0, rate_limit_exempt=(), rate_limit=("replay=3", "replay:subscription=2")
    )
    peer.documents["/feed"] = Document("text/plain", b"x")
    other = SUB + "/other"
    await subscribe(client, peer, TOPIC, CALLBACK, secret="k")
    await subscribe(client, peer, TOPIC, other, secret="k")
    now = int(time.time())
    answers = [await client.post("/hub/replay", data=_replay_form(ts=now - i)) for i in range(3)]
    assert [r.status_code for r in answers] == [202, 202, 429]
    assert "per subscription" in answers[2].text and int(answers[2].headers["Retry-After"]) > 0
    # Another subscription has a budget of its own, but this client's (3 per window) is spent.
    r = await client.post("/hub/replay", data={**_params("replay", "k", other, now, "0"), "hub.since": "0"})
    assert r.status_code == 429 and "per client" in r.text


async def test_the_proof_is_the_hmac_of_the_message_the_readme_shows():
    """docs/hub.md "Status and replay": the signed message, one value per line, as `printf` writes it."""
    import hashlib
    import hmac

    def readme(secret: str, message: str) -> str:
        return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()

    assert ownership_proof("s", "status", CALLBACK, TOPIC, 1700000000) == readme(
        "s", f"status\n{CALLBACK}\n{TOPIC}\n1700000000"
    )
    assert ownership_proof("s", "replay", CALLBACK, TOPIC, 1700000000, "40") == readme(
        "s", f"replay\n{CALLBACK}\n{TOPIC}\n1700000000\n40"
    )
