"""Writes the feed corpus: each case as the three documents a publisher serves over time.

Run ``python -m tests.hub.corpus.make_corpus`` to rewrite the files and ``cases.json`` (the committed
files are what the tests read). Every case is shaped after what real publishers serve: a Japanese
blog's RSS 1.0 in Shift_JIS with ``dc:date``, a WordPress RSS 2.0 with ``content:encoded``, Blogger's
Atom 0.3, Userland's namespaced RSS 2.0, a Netscape RSS 0.91 with its DOCTYPE, and so on.

Version 1 holds entries c, b, a; version 2 adds d and edits b; version 3 adds e and edits c. So the
first delivery (no baseline) holds c, b, a; the second d and b'; the third e and c'.
"""

from __future__ import annotations

import codecs
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
EDIT = " (edited)"


@dataclass
class Case:
    name: str
    fmt: str  # rss2, rss2-userland, rss091, rdf, rdf090, atom, atom03, json
    codec: str  # the Python codec the document is written in
    words: list[str]  # the titles of entries a..e, in the feed's language
    declared: str | None = None  # the XML declaration's encoding (None: no encoding pseudo-attribute)
    content_type: str = ""
    bom: bool = False
    note: str = ""
    options: dict[str, Any] = field(default_factory=dict)


JA = [
    "東京の天気は晴れ",
    "新しい記事を公開しました",
    "ソフトウェア更新のお知らせ",
    "週末のイベント情報",
    "開発者ブログ",
]
ZH = ["北京今日天气晴朗", "新版本发布公告", "软件更新说明", "周末活动信息", "开发者博客"]
ZH_GBK = ["朱镕基访问上海", "新版本发布公告", "软件更新说明", "周末活动信息", "开发者博客"]  # 镕 is not in GB2312
ZH_GB18030 = ["古籍中的𠀀字", "新版本发布公告", "软件更新说明", "周末活动信息", "开发者博客"]  # 𠀀: 4 bytes
TW = ["台北今日天氣晴朗", "新版本發佈公告", "軟體更新說明", "週末活動資訊", "開發者部落格"]
KO = ["서울 날씨는 맑음", "새 버전 출시 안내", "소프트웨어 업데이트", "주말 행사 정보", "개발자 블로그"]
RU = ["Погода в Москве", "Новая версия вышла", "Обновление программы", "События выходных", "Блог разработчиков"]
PL = ["Pogoda w Łodzi", "Nowa wersja już jest", "Żółć gęślą jaźń", "Wydarzenia weekendu", "Blog programistów"]
CS = ["Počasí v Brně", "Nová verze vyšla", "Příliš žluťoučký kůň", "Události víkendu", "Blog vývojářů"]
EL = ["Ο καιρός στην Αθήνα", "Νέα έκδοση", "Ενημέρωση λογισμικού", "Εκδηλώσεις", "Ιστολόγιο"]
FR = [
    "Météo à Paris",
    "Nouvelle version publiée",
    "Mise à jour façile",
    "Événements du week-end",
    "Blog des développeurs",
]
EURO = ["Prix: 20 € TTC", "Nouvelle version publiée", "Mise à jour", "Œuvres du week-end", "Blog"]
QUOTES = ["“Smart quotes” — and dashes", "New release", "Software update…", "Weekend events", "Developer blog"]
EN = ["Weather in London", "New release is out", "Software update", "Weekend events", "Developer blog"]
MIXED = ["Wetter in München", "日本語のタイトル", "Ελληνικά", "한국어 제목", "Emoji 🎉 feed"]

CASES = [
    Case(
        "shift_jis-rdf",
        "rdf",
        "shift_jis",
        JA,
        "Shift_JIS",
        "application/rdf+xml",
        note="RSS 1.0 as Japanese blog hosts serve it",
    ),
    Case(
        "cp932-rss2",
        "rss2",
        "cp932",
        ["①丸数字と髙橋さん", *JA[1:]],
        "Shift_JIS",
        "application/rss+xml",
        note="labelled Shift_JIS but using Windows-31J characters",
    ),
    Case("euc-jp-rss2", "rss2", "euc_jp", JA, "EUC-JP", "application/rss+xml"),
    Case(
        "iso-2022-jp-atom", "atom", "iso2022_jp", JA, "ISO-2022-JP", "application/atom+xml", note="a stateful encoding"
    ),
    Case("gb2312-rss2", "rss2", "gb2312", ZH, "GB2312", "application/rss+xml"),
    Case(
        "gbk-labelled-gb2312",
        "rss2",
        "gbk",
        ZH_GBK,
        "gb2312",
        "application/rss+xml",
        note="labelled GB2312, written in GBK",
    ),
    Case("gb18030-atom", "atom", "gb18030", ZH_GB18030, "GB18030", "application/atom+xml"),
    Case("euc-kr-rss2", "rss2", "euc_kr", KO, "EUC-KR", "application/rss+xml"),
    Case("big5-rss2", "rss2", "big5", TW, "Big5", "application/rss+xml"),
    Case("iso-8859-1-rss2", "rss2", "latin_1", FR, "ISO-8859-1", "application/rss+xml"),
    Case("iso-8859-2-atom", "atom", "iso8859_2", PL, "ISO-8859-2", "application/atom+xml"),
    Case("iso-8859-5-rss2", "rss2", "iso8859_5", RU, "ISO-8859-5", "application/rss+xml"),
    Case("iso-8859-7-rss2", "rss2", "iso8859_7", EL, "ISO-8859-7", "application/rss+xml"),
    Case("iso-8859-15-rss2", "rss2", "iso8859_15", EURO, "ISO-8859-15", "application/rss+xml"),
    Case("windows-1250-rss2", "rss2", "cp1250", CS, "windows-1250", "application/rss+xml"),
    Case(
        "windows-1251-http-charset",
        "rss2",
        "cp1251",
        RU,
        None,
        "text/xml; charset=windows-1251",
        note="no encoding in the declaration: only the Content-Type tells",
    ),
    Case("windows-1252-rss2", "rss2", "cp1252", QUOTES, "windows-1252", "application/rss+xml"),
    Case("koi8-r-rss2", "rss2", "koi8_r", RU, "KOI8-R", "application/rss+xml"),
    Case("utf-8-bom-atom", "atom", "utf-8", MIXED, "utf-8", "application/atom+xml", bom=True),
    Case("utf-16le-bom-atom", "atom", "utf-16-le", MIXED, "UTF-16", "application/atom+xml", bom=True),
    Case("utf-16be-bom-rss2", "rss2", "utf-16-be", MIXED, "UTF-16", "application/rss+xml", bom=True),
    Case(
        "utf-16be-no-bom-rss2",
        "rss2",
        "utf-16-be",
        MIXED,
        "UTF-16",
        "application/rss+xml",
        note="no byte-order mark: XML 1.0 appendix F tells the form by the first bytes",
    ),
    Case("utf-16le-no-bom-atom", "atom", "utf-16-le", MIXED, "UTF-16LE", "application/atom+xml"),
    Case("utf-32le-bom-atom", "atom", "utf-32-le", MIXED, "UTF-32", "application/atom+xml", bom=True),
    Case(
        "malformed-rss2",
        "rss2",
        "utf-8",
        EN,
        "UTF-8",
        "application/rss+xml",
        note="an undefined &nbsp;, an unclosed <br> and a bare & in descriptions",
        options={"malformed": True},
    ),
    Case(
        "malformed-atom",
        "atom",
        "utf-8",
        EN,
        "utf-8",
        "application/atom+xml",
        note="an undefined &nbsp; and &mdash;, an unescaped AT&T and an unclosed <br> in summaries",
        options={"malformed": True},
    ),
    Case("atom03-blogger", "atom03", "utf-8", EN, "UTF-8", "application/atom+xml"),
    Case(
        "rss2-userland-namespace",
        "rss2-userland",
        "utf-8",
        EN,
        "UTF-8",
        "application/rss+xml",
        note='xmlns="http://backend.userland.com/rss2"',
    ),
    Case(
        "rss091-netscape",
        "rss091",
        "iso8859_1",
        FR,
        "ISO-8859-1",
        "application/rss+xml",
        note="Netscape's DOCTYPE, items keyed by link",
    ),
    Case("rss092", "rss092", "utf-8", EN, "UTF-8", "application/rss+xml"),
    Case("rss090-rdf", "rdf090", "utf-8", EN, None, "application/rdf+xml"),
    Case("wordpress-rss2", "rss2", "utf-8", MIXED, "UTF-8", "application/rss+xml", options={"wordpress": True}),
    Case(
        "duplicate-ids-atom",
        "atom",
        "utf-8",
        EN,
        "utf-8",
        "application/atom+xml",
        note="entry a appears twice with one id",
        options={"duplicate": True},
    ),
    Case(
        "duplicate-guids-rss2",
        "rss2",
        "utf-8",
        EN,
        "UTF-8",
        "application/rss+xml",
        note="item a appears twice with one guid",
        options={"duplicate": True},
    ),
    Case(
        "guidless-shared-link-rss2",
        "rss2",
        "utf-8",
        EN,
        "UTF-8",
        "application/rss+xml",
        note="a comment feed: no guids, every item links to the one post",
        options={"shared_link": True},
    ),
    Case(
        "guidless-rss2",
        "rss2",
        "utf-8",
        EN,
        "UTF-8",
        "application/rss+xml",
        note="no guids: items keyed by link",
        options={"guidless": True},
    ),
    Case(
        "json-feed-bom-big-numbers",
        "json",
        "utf-8",
        MIXED,
        None,
        "application/feed+json",
        bom=True,
        note="a byte-order mark, 1e400 and a 40-digit integer, four-space indentation",
    ),
    Case("json-feed-1.0", "json", "utf-8", EN, None, "application/json", options={"version": "1"}),
]


def entries(case: Case, step: int) -> list[tuple[str, str]]:
    """(letter, title) of the entries of version ``step``, newest first."""
    w = dict(zip("abcde", case.words, strict=True))
    edited = {2: "b", 3: "c"}
    letters = {1: "cba", 2: "dcba", 3: "edcba"}[step]
    out = []
    for letter in letters:
        title = w[letter]
        if any(edited[s] == letter for s in edited if s <= step):
            title += EDIT
        out.append((letter, title))
    if case.options.get("duplicate"):
        out.append(("a", w["a"] + " (again)"))
    return out


def expected(case: Case) -> list[list[str]]:
    w = dict(zip("abcde", case.words, strict=True))
    return [[w["c"], w["b"], w["a"]], [w["d"], w["b"] + EDIT], [w["e"], w["c"] + EDIT]]


def xml_item(case: Case, letter: str, title: str) -> str:
    link = f"http://example.com/{case.name}/{letter}"
    if case.options.get("shared_link"):
        link = f"http://example.com/{case.name}/post#comments"
    text = f"{title}: the full story."
    if case.options.get("malformed"):
        text = f"{title}&nbsp;&mdash; AT&T says <br> more"
    fmt = case.fmt
    if fmt in ("rss2", "rss2-userland", "rss092"):
        guid = (
            ""
            if case.options.get("shared_link") or case.options.get("guidless")
            else (f'\n      <guid isPermaLink="false">{case.name}-{letter}</guid>')
        )
        if case.options.get("wordpress"):
            return f"""
    <item>
      <title>{title}</title>
      <link>{link}</link>
      <comments>{link}#respond</comments>
      <dc:creator><![CDATA[editor]]></dc:creator>
      <pubDate>Mon, 0{ord(letter) - 96} Dec 2026 10:00:00 +0000</pubDate>
      <category><![CDATA[News]]></category>
      <guid isPermaLink="false">https://example.com/?p={ord(letter)}</guid>
      <description><![CDATA[{text} [&#8230;]]]></description>
      <content:encoded><![CDATA[<p>{text}</p>
<p>Second paragraph &amp; more.</p>]]></content:encoded>
      <slash:comments>0</slash:comments>
    </item>"""
        body = element(case, "description", text)
        return f"""
    <item>
      <title>{title}</title>
      <link>{link}</link>{guid}
      {body}
      <pubDate>Mon, 0{ord(letter) - 96} Dec 2026 10:00:00 GMT</pubDate>
    </item>"""
    if fmt == "rss091":
        return f"""
    <item>
      <title>{title}</title>
      <link>{link}</link>
      <description>{escape(text)}</description>
    </item>"""
    if fmt in ("rdf", "rdf090"):
        date = "" if fmt == "rdf090" else f"\n    <dc:date>2026-12-0{ord(letter) - 96}T10:00:00+09:00</dc:date>"
        desc = "" if fmt == "rdf090" else f"\n    <description>{escape(text)}</description>"
        return f"""
  <item rdf:about="{link}">
    <title>{title}</title>
    <link>{link}</link>{desc}{date}
  </item>"""
    if fmt == "atom":
        summary = element(case, "summary", text, ' type="html"')
        return f"""
  <entry>
    <title>{title}</title>
    <link rel="alternate" type="text/html" href="{link}"/>
    <id>tag:example.com,2026:{case.name}/{letter}</id>
    <updated>2026-12-0{ord(letter) - 96}T10:00:00Z</updated>
    {summary}
  </entry>"""
    if fmt == "atom03":
        return f"""
  <entry xmlns="http://purl.org/atom/ns#">
    <link href="{link}" rel="alternate" title="{title}" type="text/html"/>
    <author><name>Blogger User</name></author>
    <issued>2026-12-0{ord(letter) - 96}T10:00:00-08:00</issued>
    <modified>2026-12-0{ord(letter) - 96}T18:00:00Z</modified>
    <created>2026-12-0{ord(letter) - 96}T18:00:00Z</created>
    <id>tag:blogger.com,1999:blog-123.post-{ord(letter)}</id>
    <title mode="escaped" type="text/html">{title}</title>
    <content type="application/xhtml+xml" xml:base="http://example.blogspot.com/" xml:space="preserve">
      <div xmlns="http://www.w3.org/1999/xhtml">{escape(text)}</div>
    </content>
  </entry>"""
    raise ValueError(fmt)


def element(case: Case, tag: str, text: str, html: str = "") -> str:
    """``text`` (HTML) in ``tag``, escaped as it should be, or not at all in a malformed case."""
    if case.options.get("malformed"):
        return f"<{tag}>{text}</{tag}>"
    return f"<{tag}{html}>{escape(escape(text)) if html else escape(text)}</{tag}>"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def xml_document(case: Case, step: int) -> str:
    items = "".join(xml_item(case, letter, title) for letter, title in entries(case, step))
    enc = f' encoding="{case.declared}"' if case.declared else ""
    decl = f'<?xml version="1.0"{enc}?>\n'
    fmt = case.fmt
    if fmt in ("rss2", "rss2-userland"):
        ns = ' xmlns="http://backend.userland.com/rss2"' if fmt == "rss2-userland" else ""
        extra = ""
        if case.options.get("wordpress"):
            ns = (
                ' xmlns:content="http://purl.org/rss/1.0/modules/content/"'
                ' xmlns:wfw="http://wellformedweb.org/CommentAPI/"'
                ' xmlns:dc="http://purl.org/dc/elements/1.1/"'
                ' xmlns:atom="http://www.w3.org/2005/Atom"'
                ' xmlns:sy="http://purl.org/rss/1.0/modules/syndication/"'
                ' xmlns:slash="http://purl.org/rss/1.0/modules/slash/"'
            )
            extra = (
                f'\n    <atom:link href="http://example.com/{case.name}/feed/" rel="self" type="application/rss+xml" />'
                "\n    <sy:updatePeriod>\n\thourly\t</sy:updatePeriod>"
                "\n    <generator>https://wordpress.org/?v=6.4.2</generator>"
            )
        return f"""{decl}<rss version="2.0"{ns}>
  <channel>
    <title>{case.words[0]} ({case.name})</title>
    <link>http://example.com/{case.name}/</link>
    <description>{case.note or case.name}</description>
    <language>en</language>{extra}{items}
  </channel>
</rss>
"""
    if fmt == "rss092":
        return f"""{decl}<rss version="0.92">
  <channel>
    <title>{case.name}</title>
    <link>http://example.com/{case.name}/</link>
    <description>RSS 0.92</description>{items}
  </channel>
</rss>
"""
    if fmt == "rss091":
        return f"""{decl}<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN"
            "http://my.netscape.com/publish/formats/rss-0.91.dtd">
<rss version="0.91">
  <channel>
    <title>{case.name}</title>
    <link>http://example.com/{case.name}/</link>
    <description>{case.note}</description>
    <language>fr</language>{items}
  </channel>
</rss>
"""
    if fmt in ("rdf", "rdf090"):
        lis = "".join(
            f'\n        <rdf:li rdf:resource="http://example.com/{case.name}/{letter}"/>'
            for letter, _ in entries(case, step)
        )
        if fmt == "rdf090":
            return f"""{decl}<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns="http://my.netscape.com/rdf/simple/0.9/">
  <channel>
    <title>{case.name}</title>
    <link>http://example.com/{case.name}/</link>
    <description>RSS 0.90</description>
  </channel>{items}
</rdf:RDF>
"""
        return f"""{decl}<rdf:RDF
  xmlns="http://purl.org/rss/1.0/"
  xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
  xmlns:dc="http://purl.org/dc/elements/1.1/"
  xml:lang="ja">
  <channel rdf:about="http://example.com/{case.name}/index.rdf">
    <title>{case.words[1]}</title>
    <link>http://example.com/{case.name}/</link>
    <description>{case.words[4]}</description>
    <dc:language>ja</dc:language>
    <items>
      <rdf:Seq>{lis}
      </rdf:Seq>
    </items>
  </channel>{items}
</rdf:RDF>
"""
    if fmt == "atom":
        return f"""{decl}<feed xmlns="http://www.w3.org/2005/Atom">
  <title>{case.words[4]}</title>
  <subtitle>{escape(case.note or case.name)}</subtitle>
  <link rel="self" href="http://example.com/{case.name}/atom.xml"/>
  <link rel="alternate" href="http://example.com/{case.name}/"/>
  <id>tag:example.com,2026:{case.name}</id>
  <updated>2026-12-0{step}T10:00:00Z</updated>
  <author><name>{case.words[0]}</name></author>{items}
</feed>
"""
    if fmt == "atom03":
        return f"""{decl}<?xml-stylesheet href="http://www.blogger.com/styles/atom.css" type="text/css"?>
<feed xmlns="http://purl.org/atom/ns#" version="0.3" xml:lang="en-US">
  <link href="https://www.blogger.com/atom/123" rel="service.post" title="{case.name}" type="application/atom+xml"/>
  <link href="http://example.blogspot.com" rel="alternate" title="{case.name}" type="text/html"/>
  <title mode="escaped" type="text/html">{case.name}</title>
  <tagline mode="escaped" type="text/html">Atom 0.3 as Blogger served it</tagline>
  <modified>2026-12-0{step}T18:00:00Z</modified>
  <generator url="http://www.blogger.com/" version="5.15">Blogger</generator>
  <info mode="xml" type="text/html">
    <div xmlns="http://www.w3.org/1999/xhtml">This is an Atom formatted XML site feed.</div>
  </info>{items}
</feed>
"""
    raise ValueError(fmt)


def json_document(case: Case, step: int) -> str:
    version = case.options.get("version", "1.1")
    items = []
    for letter, title in entries(case, step):
        link = f"https://example.org/{case.name}/{letter}"
        items.append(
            "    {\n"
            f'      "id": "{case.name}-{letter}",\n'
            f'      "url": "{link}",\n'
            f'      "title": {json.dumps(title, ensure_ascii=False)},\n'
            f'      "content_text": {json.dumps(title + ": the full story.", ensure_ascii=False)},\n'
            f'      "date_published": "2026-12-0{ord(letter) - 96}T10:00:00+00:00",\n'
            '      "_metrics": { "views": 1e400, "ratio": 0.10000000000000000555, '
            '"id64": 1234567890123456789012345678901234567890 }\n'
            "    }"
        )
    return (
        "{\n"
        f'  "version": "https://jsonfeed.org/version/{version}",\n'
        f'  "title": {json.dumps(case.words[4], ensure_ascii=False)},\n'
        f'  "home_page_url": "https://example.org/{case.name}/",\n'
        f'  "feed_url": "https://example.org/{case.name}/feed.json",\n'
        '  "items": [\n' + ",\n".join(items) + "\n  ]\n}\n"
    )


def document(case: Case, step: int) -> bytes:
    text = json_document(case, step) if case.fmt == "json" else xml_document(case, step)
    data = text.encode(case.codec)
    if case.bom:
        data = {
            "utf-8": codecs.BOM_UTF8,
            "utf-16-le": codecs.BOM_UTF16_LE,
            "utf-16-be": codecs.BOM_UTF16_BE,
            "utf-32-le": codecs.BOM_UTF32_LE,
        }[case.codec] + data
    return data


def extension(case: Case) -> str:
    return "json" if case.fmt == "json" else "xml"


def main() -> None:
    manifest = []
    for case in CASES:
        files = []
        for step in (1, 2, 3):
            name = f"{case.name}.{step}.{extension(case)}"
            (HERE / name).write_bytes(document(case, step))
            files.append(name)
        manifest.append(
            {
                "name": case.name,
                "content_type": case.content_type,
                "codec": case.codec,
                "files": files,
                "expected": expected(case),
                "note": case.note,
            }
        )
    (HERE / "cases.json").write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
