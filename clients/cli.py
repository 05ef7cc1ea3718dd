"""Client commands of the ``reversehub`` CLI (subscribe, publish, ping, expose)."""

from __future__ import annotations

import click

commands: list[click.Command] = []
