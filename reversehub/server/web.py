"""Routes the server offers for browsers: the JS library (``/js/reversehub.js``) and a demo page (``/demo``)."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route


def _package_dir(name: str) -> Path:
    """Where package ``name`` is, found without importing it: importing ``clients`` runs its
    ``__init__``, which loads the whole Python client library into the serving process."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"package {name} is not installed")
    return Path(next(iter(spec.submodule_search_locations)))


JS_DIR = _package_dir("clients") / "js"


def _static(path: str, filename: str, media_type: str) -> Route:
    content = (JS_DIR / filename).read_bytes()

    async def endpoint(request: Request) -> Response:
        return Response(content, media_type=media_type, headers={"cache-control": "no-cache"})

    return Route(path, endpoint, methods=["GET", "HEAD"])


def routes() -> list[BaseRoute]:
    return [
        _static("/js/reversehub.js", "reversehub.js", "text/javascript; charset=utf-8"),
        _static("/demo", "demo.html", "text/html; charset=utf-8"),
    ]
