"""The character encoding of a fetched feed, so that any encoding Python knows can be diffed.

Expat reads only UTF-8, UTF-16, ISO-8859-1 and US-ASCII: a Shift_JIS or GBK feed given to it as
bytes raises "multi-byte encodings are not supported". So the hub decodes a feed itself and hands
expat and feedparser UTF-8; the document it delivers is cut from that text and encoded back into
the publisher's own encoding, behind the publisher's own byte-order mark, so its XML declaration
(kept as written) still tells the truth.

Which encoding (RFC 7303 section 3 and XML 1.0 appendix F, in this order): a byte-order mark; the
``charset`` of the Content-Type; the ``encoding`` of the XML declaration (read in the 16/32-bit
form the first bytes show when there is no mark); UTF-8. A label that does not decode is retried as
the superset publishers really write under it (WHATWG Encoding: Shift_JIS is windows-31j, GB2312 is
GBK); then UTF-8 and windows-1252 (the usual mislabels), and ISO-8859-1 last, which decodes any
bytes, so a feed is never refused for its encoding.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass

BOMS: tuple[tuple[bytes, str], ...] = (
    # UTF-32 first: its little-endian mark starts with UTF-16's.
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
)
# "<?" (or "<" and a first letter) as each 16/32-bit form writes it, for a document with no mark.
SNIFF: tuple[tuple[bytes, str], ...] = (
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\x00<\x00", "utf-16-be"),
    (b"<\x00", "utf-16-le"),
)
SUPERSETS = {
    "shift_jis": ("cp932", "shift_jis_2004"),
    "euc_jp": ("euc_jis_2004", "cp932"),
    "gb2312": ("gbk", "gb18030"),
    "gbk": ("gb18030",),
    "euc_kr": ("cp949",),
    "big5": ("cp950", "big5hkscs"),
}
# Labels publishers write (WHATWG Encoding, section 4.2) that Python's codec registry does not know.
LABELS = {
    "windows-31j": "cp932",
    "x-sjis": "shift_jis",
    "x-euc-jp": "euc_jp",
    "x-gbk": "gbk",
    "gb_2312-80": "gb2312",
    "x-x-big5": "big5",
    "iso-8859-8-i": "iso8859_8",
    "windows-874": "cp874",
    "x-mac-roman": "mac_roman",
    "x-mac-cyrillic": "mac_cyrillic",
    "unicode-1-1-utf-8": "utf-8",
    "x-unicode20utf8": "utf-8",
    "ucs-2": "utf-16",
    "iso-10646-ucs-2": "utf-16",
    "unicode": "utf-16",
}
FALLBACKS = ("utf-8", "cp1252")
DECLARATION = re.compile(r"""^\s*<\?xml[^>]*?\sencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._:-]*)["']""")
CHARSET = re.compile(r""";\s*charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Decoded:
    """A document as text: ``codec`` (a Python codec name) decoded it, after ``bom``."""

    text: str
    codec: str
    bom: bytes

    @property
    def utf8(self) -> bytes:
        return self.text.encode("utf-8")

    def encode(self, text: str, mark: bool = True) -> bytes:
        """``text`` (a cut of :attr:`text`) in the document's own encoding, behind its own mark.

        For an encoding that round-trips, these are the publisher's very bytes. A character the
        encoding cannot hold (only a decoding replacement can bring one) becomes a character
        reference, which any XML parser reads back."""
        bom = self.bom if mark else b""
        if self.codec == "utf-8":
            return bom + text.encode("utf-8", "xmlcharrefreplace")
        return bom + text.encode(self.codec, "xmlcharrefreplace")


def codec_name(label: str) -> str | None:
    """Python's name for an encoding label, or None for a label Python does not know."""
    label = label.strip()
    try:
        return codecs.lookup(LABELS.get(label.lower(), label)).name
    except (LookupError, ValueError):
        return None


def charset_of(content_type: str) -> str | None:
    found = CHARSET.search(content_type)
    return found.group(1) if found else None


def declared(body: bytes, sniffed: str | None) -> str | None:
    """The ``encoding`` of an XML declaration; in a 16/32-bit form when the first bytes show one."""
    head = body[:512].decode(sniffed or "latin-1", "ignore")
    found = DECLARATION.match(head)
    return found.group(1) if found else None


def decode(body: bytes, content_type: str = "") -> Decoded:
    """Decode a fetched document (see the module docstring for the order of the candidates)."""
    for bom, codec in BOMS:
        if body.startswith(bom):
            # A mark is the strongest sign there is (RFC 7303 section 3): bytes it does not
            # decode (a truncated UTF-16 document) become replacement characters.
            return Decoded(body[len(bom) :].decode(codec, "replace"), codec, bom)
    sniffed = next((codec for start, codec in SNIFF if body.startswith(start)), None)
    candidates: list[str] = []
    for label in (charset_of(content_type), declared(body, sniffed)):
        name = codec_name(label) if label else None
        if name is None:
            continue
        if name in ("utf-16", "utf-32"):
            # The byte order the first bytes show (a mark would have been taken above). When they
            # show none, the label is wrong: a document in UTF-16 begins with "<" in UTF-16, and
            # read as UTF-16 any even number of bytes "decodes".
            if not (sniffed and sniffed.startswith(name)):
                continue
            name = sniffed
        candidates += [name, *SUPERSETS.get(name, ())]
    if sniffed:
        candidates.append(sniffed)
    candidates += FALLBACKS
    for codec in dict.fromkeys(candidates):
        text = _try(body, codec)
        if text is not None:
            return Decoded(text, codec, b"")
    if sniffed:
        return Decoded(body.decode(sniffed, "replace"), sniffed, b"")
    return Decoded(body.decode("latin-1"), "latin-1", b"")


def _try(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None
