"""hub.authz: who may publish which topic, decided on the ping as the hub parsed it."""

from __future__ import annotations

import pytest

from hub.authz import authorize_publish
from hub.errors import Forbidden, Unauthorized
from hub.publish import FatPing, Ping
from reversehub.core.settings import Settings

PING = Ping(("https://a.example/feed", "https://b.example/feed"))
FAT = FatPing("https://a.example/feed", "text/plain", b"x")


def test_pings_are_open_and_fat_pings_need_a_trusted_network():
    settings = Settings(trusted_networks=("10.0.0.0/8",))
    authorize_publish(settings, PING, token=None, client_host="203.0.113.7")
    authorize_publish(settings, FAT, token=None, client_host="10.1.2.3")
    for host in ("203.0.113.7", None, "not an address"):
        with pytest.raises(Forbidden, match="trusted networks"):
            authorize_publish(settings, FAT, token=None, client_host=host)


def test_the_publish_token_covers_every_topic_and_trust_does_not_replace_it():
    settings = Settings(publish_token="s3cret")
    for ping in (PING, FAT):
        authorize_publish(settings, ping, token="s3cret", client_host="203.0.113.7")
        for token in (None, "nope", settings.publish_token):  # the digest is not the token
            with pytest.raises(Unauthorized, match="publish token required"):
                authorize_publish(settings, ping, token=token, client_host="127.0.0.1")


def test_a_topic_token_is_needed_for_each_topic_it_covers():
    settings = Settings(topic_token=("https://a.example/*=alpha",))
    with pytest.raises(Unauthorized):
        authorize_publish(settings, PING, token=None, client_host="127.0.0.1")
    authorize_publish(settings, PING, token="alpha", client_host="203.0.113.7")  # b.example: open to pings
    authorize_publish(settings, Ping(("https://b.example/feed",)), token=None, client_host="203.0.113.7")
    # The topic token stands for trust for the topics it covers; other fat pings still need trust.
    authorize_publish(settings, FAT, token="alpha", client_host="203.0.113.7")
    with pytest.raises(Forbidden):
        authorize_publish(settings, FatPing("https://b.example/f", "text/plain", b"x"), token="alpha", client_host=None)


def test_the_global_token_opens_topics_with_a_token_of_their_own():
    settings = Settings(publish_token="global", topic_token=("https://a.example/*=alpha",))
    authorize_publish(settings, PING, token="global", client_host=None)
    with pytest.raises(Unauthorized):  # alpha covers a.example only; b.example needs the global token
        authorize_publish(settings, PING, token="alpha", client_host=None)
