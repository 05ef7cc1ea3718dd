"""Watch an Atom or RSS feed without polling it: print new entries as they are published.

    python watch.py http://127.0.0.1:8001/feed.xml [--hub URL]

The hub is discovered from the feed (its Link rel="hub"). The watcher's callback URL is a name on
the hub's own relay, so it works behind NAT and firewalls: it only makes outgoing requests.
"""

from __future__ import annotations

import argparse
import sys
import threading

from clients import Subscriber, Update


def show(update: Update) -> None:
    for entry in update.entries:
        print(f"new entry: {entry.get('title', '(untitled)')}  {entry.get('link', '')}".rstrip(), flush=True)


def state(name: str) -> None:
    print(f"[{name}]", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("feed", help="URL of the Atom or RSS feed")
    parser.add_argument("--hub", default=None, help="hub URL (default: discovered from the feed)")
    args = parser.parse_args()

    with Subscriber(args.feed, show, hub=args.hub, on_state=state) as subscriber:
        print(f"watching {subscriber.topic} via {subscriber.hub} (Ctrl-C to stop)", file=sys.stderr, flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
