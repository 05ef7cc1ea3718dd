"""The hub's tables on the shared declarative base."""

from __future__ import annotations

from reversehub.db import Base  # noqa: F401
