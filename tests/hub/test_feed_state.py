"""Feed state across fetches (issue 15): fat pings and fetched entries in one model, no topic ever
wedged, failing fetches backing off, baselines that spare subscribers the back catalogue.

The background fetcher is stopped in most of these tests and the topic processed by hand: each
fetch is then one awaited call, and an error in it fails the test instead of a log line."""

from __future__ import annotations

import random
import time

import feedparser
import pytest
from sqlalchemy import select, update

from hub import store
from hub.models import Payload, Topic
from tests.hub import documents
from tests.hub.conftest import SUB, subscribe
from tests.hub.peers import Document
from tests.support import wait_for

pytestmark = pytest.mark.anyio

FEED = "http://pub.test/feed.xml"
ATOM = "application/atom+xml"


def atom(versions: dict[int, int]) -> bytes:
    """An Atom feed of entries ``{number: version}``, newest (highest number) first."""
    order = sorted(versions, reverse=True)
    return documents.atom(order, changed={i: f"v{versions[i]}" for i in order})


def entries(body: bytes) -> list[tuple[int, int]]:
    """(number, version) of each entry of an Atom document made by :func:`atom`."""
    return [(int(e.id.rsplit("-", 1)[1]), int(e.summary[1:])) for e in feedparser.parse(body).entries]


async def topic_row(app, url: str = FEED) -> Topic:
    async with app.state.hub.services.sessions() as s:
        return (await s.execute(select(Topic).where(Topic.url == url))).scalar_one()


async def payloads(app, url: str = FEED) -> list[bytes]:
    async with app.state.hub.services.sessions() as s:
        return list((await s.execute(select(Payload.body).where(Payload.topic == url).order_by(Payload.id))).scalars())


async def fetch(app, *, pinged: bool = True, url: str = FEED) -> int:
    """One fetch of the topic as the fetcher makes it after a ping (or a poll): its error is ours."""
    if pinged:
        await store.record_pings(app.state.hub.services.sessions, [url])
    return await app.state.hub.fetcher.process(await topic_row(app, url))


async def fat_ping(client, body: bytes, url: str = FEED) -> None:
    r = await client.post(f"/publish?hub.topic={url}", content=body, headers={"Content-Type": ATOM})
    assert r.status_code == 204, r.text


@pytest.fixture
async def quiet_hub(make_hub):
    """A hub whose fetcher loop is stopped: tests call ``fetcher.process`` themselves."""

    async def factory(**overrides):
        app, client = await make_hub(**overrides)
        app.state.hub.fetcher.close()
        return app, client

    return factory


async def test_a_fetch_after_a_fat_ping_is_not_wedged(quiet_hub, peer):
    app, client = await quiet_hub()
    peer.documents["/feed.xml"] = Document(ATOM, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/cb")
    await fat_ping(client, atom({2: 0, 1: 0}))
    peer.documents["/feed.xml"] = Document(ATOM, atom({3: 0, 2: 0, 1: 0}))
    await fetch(app)  # raised IntegrityError (hub_entries.topic_id, key_hash) here, and on every fetch after
    peer.documents["/feed.xml"] = Document(ATOM, atom({4: 0, 3: 0, 2: 0, 1: 0}))
    await fetch(app, pinged=False)
    sent = [entries(body) for body in await payloads(app)]
    # The fat ping as it was; then each fetch only what neither the baseline nor the fat ping sent.
    assert sent == [[(2, 0), (1, 0)], [(3, 0)], [(4, 0)]]
    assert (await topic_row(app)).fetch_failures == 0


async def test_a_fat_ping_to_a_topic_never_fetched_then_its_feed(quiet_hub, peer):
    app, client = await quiet_hub()
    peer.documents["/feed.xml"] = Document(ATOM, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/cb")
    async with store.writing(app.state.hub.services.sessions) as s:  # as if its baseline had failed
        await s.execute(update(Topic).values(fetched_at=None))
    await fat_ping(client, atom({2: 0, 1: 0}))
    await fetch(app)  # the first successful fetch is the baseline: nothing goes out
    peer.documents["/feed.xml"] = Document(ATOM, atom({3: 0, 2: 1, 1: 0}))
    await fetch(app)
    assert [entries(body) for body in await payloads(app)] == [[(2, 0), (1, 0)], [(3, 0), (2, 1)]]


@pytest.mark.parametrize("seed", range(12))
async def test_no_sequence_of_fat_pings_pings_and_polls_wedges_a_topic(quiet_hub, peer, seed):
    """Random sequences of publisher edits, fat pings, pings, polls and failing fetches. After every
    successful fetch, every entry version the feed shows has gone out (unless it was there at the
    baseline), and a fetch never sends a version that went out before (by a fetch or a fat ping)."""
    rng = random.Random(seed)
    app, client = await quiet_hub()
    feed = {1: 0, 2: 0}
    peer.documents["/feed.xml"] = Document(ATOM, atom(feed))
    await subscribe(client, peer, FEED, SUB + "/cb")
    baseline = set(feed.items())
    sent: set[tuple[int, int]] = set()
    seen_payloads = 0
    for _ in range(14):
        op = rng.choice(["add", "edit", "fat", "fat", "ping", "poll", "fail"])
        if op == "fail":  # a fetch that fails sends and records nothing
            gone(peer, status=rng.choice([404, 500, 503]))
            await fetch(app, pinged=rng.random() < 0.5)
            peer.verify_answer.pop("/feed.xml")
            assert (await topic_row(app)).fetch_failures >= 1
        elif op == "add":
            feed[max(feed) + 1] = 0
        elif op == "edit":
            feed[rng.choice(list(feed))] += 1
        elif op == "fat":
            shown = rng.sample(sorted(feed), rng.randint(1, len(feed)))
            await fat_ping(client, atom({i: feed[i] for i in shown}))
        else:
            await fetch(app, pinged=op == "ping")
        peer.documents["/feed.xml"] = Document(ATOM, atom(feed))
        bodies = await payloads(app)
        for body in bodies[seen_payloads:]:
            got = entries(body)
            if op in ("ping", "poll"):
                assert not sent.intersection(got), (op, got, sent)
            sent.update(got)
        seen_payloads = len(bodies)
        if op in ("ping", "poll"):
            assert set(feed.items()) - baseline <= sent, (feed, sent)
            assert (await topic_row(app)).fetch_failures == 0


def gone(peer, path: str = "/feed.xml", status: int = 404) -> None:
    """The publisher's feed answers ``status``."""
    peer.documents.pop(path, None)
    peer.verify_answer[path] = lambda _params: (status, "")


def serve(peer, body: bytes, path: str = "/feed.xml") -> None:
    peer.verify_answer.pop(path, None)
    peer.documents[path] = Document(ATOM, body)


async def test_a_failed_subscribe_time_fetch_makes_the_first_answer_the_baseline(quiet_hub, peer):
    app, client = await quiet_hub()
    gone(peer)
    await subscribe(client, peer, FEED, SUB + "/cb")  # its baseline fetch got a 404
    serve(peer, atom(dict.fromkeys(range(1, 51), 0)))
    await fetch(app)  # sent all 50 entries
    assert await payloads(app) == []
    serve(peer, atom(dict.fromkeys(range(1, 52), 0)))
    await fetch(app)
    assert [entries(body) for body in await payloads(app)] == [[(51, 0)]]


async def test_a_new_subscriber_gets_nothing_added_while_nobody_listened(quiet_hub, peer):
    app, client = await quiet_hub()
    serve(peer, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/a")
    await store.deactivate(app.state.hub.services.sessions, FEED, SUB + "/a", "unsubscribed")
    serve(peer, atom({3: 0, 2: 0, 1: 1}))  # nobody listens: nobody fetches
    app.state.hub.fetcher._fresh.clear()  # a while later: subscribers coming together share a baseline
    await subscribe(client, peer, FEED, SUB + "/b")
    serve(peer, atom({4: 0, 3: 0, 2: 0, 1: 1}))
    await fetch(app)
    assert [entries(body) for body in await payloads(app)] == [[(4, 0)]]


async def test_a_returning_subscriber_whose_baseline_fails_gets_no_burst_either(quiet_hub, peer):
    app, client = await quiet_hub()
    serve(peer, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/a")
    await store.deactivate(app.state.hub.services.sessions, FEED, SUB + "/a", "unsubscribed")
    gone(peer, status=503)
    app.state.hub.fetcher._fresh.clear()
    await subscribe(client, peer, FEED, SUB + "/b")
    serve(peer, atom({3: 0, 2: 0, 1: 0}))
    await fetch(app)
    serve(peer, atom({4: 0, 3: 0, 2: 0, 1: 0}))
    await fetch(app)
    assert [entries(body) for body in await payloads(app)] == [[(4, 0)]]


async def test_a_feed_that_answers_again_gets_its_next_baseline_at_once(quiet_hub, peer):
    app, client = await quiet_hub()
    gone(peer)
    await subscribe(client, peer, FEED, SUB + "/a")  # failed: the next ones wait a minute to try again
    serve(peer, atom({2: 0, 1: 0}))
    await fetch(app)
    await store.deactivate(app.state.hub.services.sessions, FEED, SUB + "/a", "unsubscribed")
    serve(peer, atom({3: 0, 2: 0, 1: 0}))  # nobody listens
    await subscribe(client, peer, FEED, SUB + "/b")
    serve(peer, atom({4: 0, 3: 0, 2: 0, 1: 0}))
    await fetch(app)
    assert [entries(body) for body in await payloads(app)] == [[(4, 0)]]


async def test_subscribers_arriving_together_share_one_fetch(quiet_hub, peer):
    app, client = await quiet_hub()
    serve(peer, atom({1: 0}))
    for name in ("a", "b", "c"):
        await subscribe(client, peer, FEED, SUB + "/" + name)
    assert len(peer.fetches) == 1


async def test_a_renewal_needs_no_fetch(quiet_hub, peer):
    app, client = await quiet_hub()
    serve(peer, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/a")
    app.state.hub.fetcher._fresh.clear()  # a while later
    await subscribe(client, peer, FEED, SUB + "/a")
    assert len(peer.fetches) == 1


async def test_a_new_subscriber_of_a_listened_topic_gets_nothing_older_than_itself(quiet_hub, peer):
    app, client = await quiet_hub()
    serve(peer, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/a")
    serve(peer, atom({2: 0, 1: 0}))  # not pinged, not polled yet
    app.state.hub.fetcher._fresh.clear()  # a while later
    await subscribe(client, peer, FEED, SUB + "/b")  # its fetch sends entry 2 to a, not to b
    serve(peer, atom({3: 0, 2: 0, 1: 0}))
    await fetch(app)
    await wait_for(lambda: len(peer.to("/a")) == 2 and len(peer.to("/b")) == 1)
    assert [entries(d.body) for d in peer.to("/a")] == [[(2, 0)], [(3, 0)]]
    assert [entries(d.body) for d in peer.to("/b")] == [[(3, 0)]]


async def test_a_failing_fetch_backs_off_up_to_the_maximum_and_a_success_resets_it(quiet_hub, peer):
    app, client = await quiet_hub(poll_min_interval=10.0, poll_max_interval=100.0)
    serve(peer, atom({1: 0}))
    await subscribe(client, peer, FEED, SUB + "/cb")
    for status in (404, 500):
        gone(peer, status=status)
        for failures in range(1, 8):
            started = time.time()
            await fetch(app, pinged=failures % 2 == 0)
            topic = await topic_row(app)
            assert topic.fetch_failures == failures and topic.ping_at is None
            wait = min(100.0, 10.0 * 2 ** (failures - 1))  # jittered to 50-100 % of it
            assert started + wait / 2 <= topic.next_poll_at <= time.time() + wait
        serve(peer, atom({2: 0, 1: 0}))
        await fetch(app, pinged=False)
        topic = await topic_row(app)
        # Answered again: polled as any topic its publisher pings, at the maximum as a safety net.
        assert topic.fetch_failures == 0 and time.time() + 90.0 <= topic.next_poll_at <= time.time() + 100.0
    assert [entries(body) for body in await payloads(app)] == [[(2, 0)]]


async def test_a_pinged_topic_stays_at_the_safety_net_poll(quiet_hub, peer):
    app, client = await quiet_hub(poll_min_interval=10.0, poll_max_interval=1000.0)
    serve(peer, atom({1: 0}))
    serve(peer, atom({1: 0}), path="/other.xml")
    await subscribe(client, peer, FEED, SUB + "/a")
    await subscribe(client, peer, "http://pub.test/other.xml", SUB + "/b")
    await fetch(app, pinged=True)
    for _ in range(3):  # its safety-net polls: it went back to adaptive polling after the first
        await fetch(app, pinged=False)
        assert (await topic_row(app)).next_poll_at >= time.time() + 990
    for _ in range(3):  # a topic nobody pings is polled adaptively
        await fetch(app, pinged=False, url="http://pub.test/other.xml")
        assert (await topic_row(app, "http://pub.test/other.xml")).next_poll_at <= time.time() + 80


def test_poll_interval_flags_and_variables() -> None:
    from reversehub.core.settings import Settings
    from tests.test_security import parse_serve

    code, flagged, output = parse_serve(["--poll-min-interval", "5", "--poll-max-interval", "50"])
    assert code == 0 and flagged is not None, output
    assert (flagged.poll_min_interval, flagged.poll_max_interval) == (5.0, 50.0)
    env = {"REVERSEHUB_POLL_MIN_INTERVAL": "0.5", "REVERSEHUB_POLL_MAX_INTERVAL": "7"}
    code, from_env, output = parse_serve([], env=env)
    assert code == 0 and from_env is not None, output
    assert (from_env.poll_min_interval, from_env.poll_max_interval) == (0.5, 7.0)
    assert (Settings().poll_min_interval, Settings().poll_max_interval) == (60.0, 3600.0)
    code, _, output = parse_serve(["--poll-min-interval", "100", "--poll-max-interval", "50"])
    assert code != 0 and "--poll-min-interval must not exceed --poll-max-interval" in output
    code, _, output = parse_serve(["--poll-min-interval", "0"])
    assert code != 0
