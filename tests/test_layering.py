"""The layers, read from the source with ``ast`` (docs/architecture.md).

- ``reversehub/core/`` is the ground: it imports nothing of ``hub``, ``relay``, ``clients`` or
  ``reversehub/server/``.
- ``hub`` and ``relay`` never import each other; only ``reversehub/server/`` (and Alembic's
  ``migrations/env.py``, which needs every package's models) imports both.
- ``clients`` imports neither ``hub`` nor server code, and ``import clients`` stays light.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("hub", "relay", "clients", "reversehub", "migrations")


def modules() -> Iterator[tuple[Path, str]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path, ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, anywhere in it (also inside functions), fully qualified."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def top(name: str) -> str:
    """The layer a module belongs to: ``hub``, ``relay``, ``clients``, ``core`` or ``server``."""
    parts = name.split(".")
    if parts[0] == "reversehub" and len(parts) > 1 and parts[1] in ("core", "server"):
        return parts[1]
    return parts[0]


def layers(names: set[str]) -> set[str]:
    return {top(n) for n in names} & {"hub", "relay", "clients", "core", "server"}


GRAPH = {module: (path, layers(imported(path, module))) for path, module in modules()}


def offenders(where: str, forbidden: set[str]) -> list[str]:
    return [
        f"{module} imports {sorted(uses & forbidden)}"
        for module, (_, uses) in GRAPH.items()
        if top(module) == where and uses & forbidden
    ]


def test_the_graph_is_read() -> None:
    # The checks below would pass vacuously on an empty graph.
    assert "hub" in GRAPH["reversehub.server.app"][1]
    assert "relay" in GRAPH["reversehub.server.app"][1]
    assert "core" in GRAPH["hub.service"][1]


def test_core_is_the_ground() -> None:
    assert offenders("core", {"hub", "relay", "clients", "server"}) == []


def test_hub_and_relay_do_not_import_each_other() -> None:
    assert offenders("hub", {"relay"}) == []
    assert offenders("relay", {"hub"}) == []


def test_only_the_server_knows_both_halves() -> None:
    both = [
        module
        for module, (_, uses) in GRAPH.items()
        if {"hub", "relay"} <= uses | {top(module)} and top(module) != "server" and module != "migrations.env"
    ]
    assert both == []


def test_clients_import_no_hub_and_no_server() -> None:
    assert offenders("clients", {"hub", "server", "core"}) == []


def test_import_clients_stays_light() -> None:
    heavy = ("sqlalchemy", "starlette", "uvicorn", "alembic", "aiosqlite")
    code = f"import sys, clients; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == ""


RELAY_URL_SPELLINGS = ("/reversehttp/r/", "/reversehttp/p/")


def spells_relay_urls(path: Path) -> bool:
    """``path`` has a string constant in code (not a docstring or another bare string) that spells
    a relay URL: a request or private URL anywhere in it, or a path-based public URL at its start."""
    tree = ast.parse(path.read_text(), str(path))
    bare = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in bare:
            if node.value.startswith("/relay/") or any(s in node.value for s in RELAY_URL_SPELLINGS):
                return True
    return False


def test_the_relay_url_layout_is_spelled_once() -> None:
    # relay/routes.py is the one table; everything else derives its URLs from it (issue 12, item 3).
    spelled = [
        module
        for path, module in modules()
        if top(module) in ("hub", "relay", "core", "server") and spells_relay_urls(path)
    ]
    assert spelled == ["relay.routes"]
