"""Optional dependencies: what ``reversehub[scale]`` adds, and the error that names it.

A single process on SQLite needs neither PostgreSQL's driver nor Redis's client, so they are an
extra. A URL that needs one fails where it is first used, with the command that installs it,
rather than with an ``ImportError`` from deep inside SQLAlchemy or the broker.
"""

from __future__ import annotations

import importlib.util

SCALE = "pip install 'reversehub[scale]'"


class MissingExtra(RuntimeError):
    """A configured backend needs a package that is not installed."""


def require(module: str, needed_by: str) -> None:
    """Raise :class:`MissingExtra` unless ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtra(f"{needed_by} needs the {module} package, which is not installed: {SCALE}")
