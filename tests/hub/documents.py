"""Real feed documents, in the shapes publishers write them."""

from __future__ import annotations

import json


def atom(entries: list[int], changed: dict[int, str] | None = None, extra_head: str = "") -> bytes:
    changed = changed or {}
    items = "".join(
        f"""
  <entry>
    <title>Entry {i}</title>
    <link href="http://example.com/{i}"/>
    <id>urn:uuid:entry-{i}</id>
    <updated>2026-11-2{i % 10}T10:00:00Z</updated>
    <summary>{changed.get(i, f"Summary {i}")}</summary>
  </entry>"""
        for i in entries
    )
    return f"""<?xml version="1.0" encoding="utf-8"?>
<feed xmlns="http://www.w3.org/2005/Atom" xmlns:media="http://search.yahoo.com/mrss/">
  <title>Example Feed</title>
  <subtitle>A subtitle.</subtitle>
  <link href="http://example.com/"/>
  <link rel="hub" href="http://hub.test/hub"/>{extra_head}
  <updated>2026-11-27T10:00:00Z</updated>
  <author><name>John Doe</name></author>
  <id>urn:uuid:60a76c80-d399-11d9-b91C-0003939e0af6</id>{items}
</feed>
""".encode()


def rss2(entries: list[int], guid: bool = True) -> bytes:
    items = "".join(
        f"""
    <item>
      <title>Item {i}</title>
      <link>http://example.com/item/{i}</link>
      {f'<guid isPermaLink="false">item-{i}</guid>' if guid else ""}
      <description>Description {i} &amp; more</description>
    </item>"""
        for i in entries
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<rss version="2.0" xmlns:atom="http://www.w3.org/2005/Atom">
  <channel>
    <title>Scripting News</title>
    <link>http://scripting.com/</link>
    <description>It's even worse than it appears.</description>
    <atom:link rel="hub" href="http://hub.test/hub"/>{items}
  </channel>
</rss>
""".encode()


def rss1(entries: list[int]) -> bytes:
    lis = "".join(f'\n        <rdf:li rdf:resource="http://example.com/r/{i}"/>' for i in entries)
    items = "".join(
        f"""
  <item rdf:about="http://example.com/r/{i}">
    <title>Resource {i}</title>
    <link>http://example.com/r/{i}</link>
    <description>About {i}</description>
  </item>"""
        for i in entries
    )
    return f"""<?xml version="1.0"?>
<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://purl.org/rss/1.0/">
  <channel rdf:about="http://example.com/rss1">
    <title>RSS 1.0 feed</title>
    <link>http://example.com/</link>
    <description>An RDF Site Summary.</description>
    <items>
      <rdf:Seq>{lis}
      </rdf:Seq>
    </items>
  </channel>{items}
</rdf:RDF>
""".encode()


def json_feed(entries: list[int]) -> bytes:
    return json.dumps(
        {
            "version": "https://jsonfeed.org/version/1.1",
            "title": "My JSON Feed",
            "home_page_url": "https://example.org/",
            "feed_url": "https://example.org/feed.json",
            "hubs": [{"type": "WebSub", "url": "http://hub.test/hub"}],
            "items": [{"id": f"j{i}", "url": f"https://example.org/{i}", "content_text": f"Post {i}"} for i in entries],
        }
    ).encode()
