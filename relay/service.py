"""Placeholder: the relay service (replaced by the real one)."""

from __future__ import annotations

from reversehub.services import Services


class Relay:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def run(self) -> None:
        """Background work until cancelled."""

    async def aclose(self) -> None:
        """Stop taking work; called before the background tasks are cancelled."""
