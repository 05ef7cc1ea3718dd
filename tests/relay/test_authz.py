"""relay.authz: who may register, and which names are reserved."""

from __future__ import annotations

import base64

import pytest

from relay.authz import authorize_name, authorize_registrar
from relay.errors import NameReserved, Unauthorized
from reversehub.core.settings import Settings


def basic(password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"anyone:{password}".encode()).decode()}


def test_registration_is_open_without_a_token():
    authorize_registrar(Settings(), {})
    authorize_name(Settings(), "alice", None)


def test_the_registration_token_by_bearer_or_basic_password():
    settings = Settings(registration_token="s3cret")
    authorize_registrar(settings, {"authorization": "Bearer s3cret"})
    authorize_registrar(settings, basic("s3cret"))
    for headers in ({}, {"authorization": "Bearer nope"}, basic("nope")):
        with pytest.raises(Unauthorized) as refused:
            authorize_registrar(settings, headers)
        assert refused.value.status == 401 and refused.value.reason == "registration token required"
        assert "Basic" in refused.value.challenge and "Bearer" in refused.value.challenge


def test_reserved_names_are_matched_case_insensitively_and_need_their_token():
    settings = Settings(reserve_name=("alice=mine", "team-*=ours"))
    authorize_name(settings, "ALICE", "mine")
    authorize_name(settings, "team-red", "ours")
    authorize_name(settings, "bob", None)
    for name, token in (("Alice", "guess"), ("alice", None), ("team-blue", "mine")):
        with pytest.raises(NameReserved):
            authorize_name(settings, name, token)
