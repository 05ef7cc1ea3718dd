"""The user documentation: the README stays a short page for users, and the mkdocs site builds.

The site is `mkdocs build --strict` (every page in the nav, no broken link or anchor); its
configuration page is generated from the command line's own options and must match them.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import click

from tests.support import unavailable

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_configuration", ROOT / "scripts" / "gen_configuration.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prose(markdown: str) -> str:
    """The markdown without its fenced code blocks."""
    return re.sub(r"^```.*?^```", "", markdown, flags=re.S | re.M)


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        unavailable("mkdocs and mkdocs-material are not installed (pip install -e '.[dev]')")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "site" / "configuration" / "index.html").exists()


def test_configuration_page_matches_the_cli() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    stale = "docs/configuration.md is stale: run .venv/bin/python scripts/gen_configuration.py"
    assert page == generator().render(), stale


def test_configuration_page_names_every_serve_option_and_variable() -> None:
    from reversehub.server.cli import serve

    page = (ROOT / "docs" / "configuration.md").read_text()
    for param in serve.params:
        if isinstance(param, click.Option):
            assert f"`{max(param.opts, key=len)}" in page
            assert f"`{param.envvar}`" in page


def test_readme_is_a_short_page_for_users() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    head = "\n".join(text.splitlines()[:12])
    assert "make run" in head and "make test" in head
    # A clone has no ../shared, and design notes live in docs/, not on the first page.
    for word in ("../shared", "callgrind", "malloc", "gc.callbacks"):
        assert word not in text


def test_readme_flags_exist() -> None:
    """Every --flag the README's prose names is an option of some `reversehub` command."""
    from reversehub.server.cli import main

    known: set[str] = set()

    def collect(command: click.Command) -> None:
        for param in command.params:
            if isinstance(param, click.Option):
                known.update(param.opts + param.secondary_opts)
        if isinstance(command, click.Group):
            ctx = click.Context(command)
            for name in command.list_commands(ctx):  # the client's commands are added lazily
                sub = command.get_command(ctx, name)
                assert sub is not None
                collect(sub)

    collect(main)
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", prose(README.read_text())))
    assert named and named <= known, named - known


def test_readme_relative_links_resolve() -> None:
    """PyPI shows the README as the long description: its relative links must at least exist in a clone."""
    # docs/deploy.md is the deployment guide of issue 16 item 1, written beside this page.
    expected_elsewhere = {"docs/deploy.md"}
    links = re.findall(r"\]\(([^)\s]+)\)", prose(README.read_text()))
    relative = [link.split("#")[0] for link in links if not re.match(r"[a-z]+:", link) and not link.startswith("#")]
    assert relative
    missing = [link for link in relative if not (ROOT / link).exists() and link not in expected_elsewhere]
    assert not missing
