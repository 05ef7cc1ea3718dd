"""A tiny local feed publisher, so the walk-through works with no internet.

    python feed_publisher.py serve [--port 8001] [--hub http://127.0.0.1:8000/hub]
    python feed_publisher.py post "Title" [--port 8001]

``serve`` serves an Atom feed at /feed.xml that names its hub (``Link: <hub>; rel="hub"`` and
``<link rel="hub">``). ``post`` adds an entry to the running publisher, which then pings the hub
(``hub.mode=publish``); the hub fetches the feed and pushes the new entry to every subscriber.
"""

from __future__ import annotations

import argparse
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs
from xml.sax.saxutils import escape, quoteattr

import httpx

from clients import ping


class Feed:
    def __init__(self, base: str, hub: str) -> None:
        self.base, self.hub = base, hub
        self.url = f"{base}/feed.xml"
        self.entries: list[tuple[int, str, str]] = []  # (number, title, updated)
        self.lock = threading.Lock()

    def add(self, title: str) -> int:
        with self.lock:
            number = len(self.entries) + 1
            self.entries.append((number, title, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")))
            return number

    def atom(self) -> bytes:
        with self.lock:
            entries = list(reversed(self.entries))
        updated = entries[0][2] if entries else "2026-01-01T00:00:00Z"
        items = "".join(
            f"  <entry><id>{self.base}/entries/{n}</id><title>{escape(title)}</title>"
            f"<link href={quoteattr(f'{self.base}/entries/{n}')}/><updated>{when}</updated></entry>\n"
            for n, title, when in entries
        )
        return (
            '<?xml version="1.0" encoding="utf-8"?>\n'
            '<feed xmlns="http://www.w3.org/2005/Atom">\n'
            f"  <title>Local feed</title><id>{self.url}</id><updated>{updated}</updated>\n"
            f'  <link rel="self" href={quoteattr(self.url)}/>\n  <link rel="hub" href={quoteattr(self.hub)}/>\n'
            f"{items}</feed>\n"
        ).encode()


def serve(port: int, hub: str) -> None:
    feed = Feed(f"http://127.0.0.1:{port}", hub)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path != "/feed.xml":
                self.send_error(404)
                return
            body = feed.atom()
            self.send_response(200)
            self.send_header("Content-Type", "application/atom+xml")
            self.send_header("Link", f'<{hub}>; rel="hub", <{feed.url}>; rel="self"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            title = parse_qs(self.rfile.read(length).decode()).get("title", ["(untitled)"])[0]
            number = feed.add(title)
            ping(feed.url, hub=hub)  # "the feed changed": the hub fetches it and pushes what is new
            self.send_response(201)
            self.send_header("Location", f"{feed.base}/entries/{number}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    print(f"serving {feed.url} (hub {hub})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


def post(port: int, title: str) -> None:
    response = httpx.post(f"http://127.0.0.1:{port}/entries", data={"title": title})
    response.raise_for_status()
    print(f"posted {response.headers['location']}")


def main() -> None:
    parser = argparse.ArgumentParser(description="A tiny local Atom feed publisher.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the feed")
    serve_cmd.add_argument("--port", type=int, default=8001)
    serve_cmd.add_argument("--hub", default="http://127.0.0.1:8000/hub")
    post_cmd = commands.add_parser("post", help="publish a new entry")
    post_cmd.add_argument("title")
    post_cmd.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port, args.hub)
    else:
        post(args.port, args.title)


if __name__ == "__main__":
    main()
