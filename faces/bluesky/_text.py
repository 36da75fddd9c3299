"""Bluesky text rules: grapheme counting, rich-text facets, timestamps and record keys.

Everything here is pure (no network), so it is unit-tested on its own:

- `measure()`: Bluesky limits a post to 300 graphemes (extended grapheme clusters: a family
  emoji or a flag is one) and 3000 UTF-8 bytes.
- `find_spans()` / `facets_for()`: links, mentions and hashtags as `app.bsky.richtext.facet`
  entries. Facet indexes are UTF-8 BYTE offsets (start inclusive, end exclusive), not character
  offsets: an emoji before a link shifts it by 4 bytes, not 1 or 2.
- `format_datetime()`: `createdAt` as ISO-8601 UTC with milliseconds and "Z", the form the
  Bluesky app writes and every AppView parses.
- `tid_for_key()`: a record key in TID syntax derived from an idempotency key, so a retried
  publish writes to the same record key and cannot create a second post.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import regex

__all__ = [
    "MAX_GRAPHEMES",
    "MAX_TEXT_BYTES",
    "Span",
    "facets_for",
    "find_spans",
    "format_datetime",
    "is_valid_handle",
    "is_valid_tid",
    "measure",
    "parse_datetime",
    "tid_for_key",
    "utf8_offset",
]

MAX_GRAPHEMES = 300  # app.bsky.feed.post#text maxGraphemes
MAX_TEXT_BYTES = 3000  # app.bsky.feed.post#text maxLength (lexicon string lengths are bytes)
MAX_TAG_GRAPHEMES = 64  # app.bsky.richtext.facet#tag maxGraphemes

_GRAPHEME = regex.compile(r"\X")


def measure(text: str) -> int:
    """The number of extended grapheme clusters in `text`, as Bluesky counts a post."""
    return len(_GRAPHEME.findall(text))


def utf8_offset(text: str, index: int) -> int:
    """The UTF-8 byte offset of the character at `index` in `text`."""
    return len(text[:index].encode("utf-8"))


# ---- facets ---------------------------------------------------------------------------------

# The patterns follow the official client's rich-text detection (@atproto/api RichText):
# a token starts the text or follows whitespace or "(".
_LINK = re.compile(r"(?:^|(?<=[\s(]))(https?://\S+)", re.IGNORECASE)
_MENTION = re.compile(r"(?:^|(?<=[\s(]))@([a-zA-Z0-9.-]+)")
_TAG = re.compile(r"(?:^|(?<=\s))[#＃]([^\s\u00ad\u2060\u200a\u200b\u200c\u200d\u20e2]+)")
_HANDLE = re.compile(
    r"^([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$"
)
_TRAILING_PUNCTUATION = ".,;:!?\"'"


def is_valid_handle(handle: str) -> bool:
    """atproto handle syntax: a DNS name with at least two labels, at most 253 characters,
    whose last label starts with a letter."""
    return len(handle) <= 253 and _HANDLE.match(handle) is not None


@dataclass(frozen=True)
class Span:
    """A detected rich-text feature: characters `start:end` of the text (Python indexes),
    its kind and value (the URL, the handle without "@", the tag without "#")."""

    start: int
    end: int
    kind: Literal["link", "mention", "tag"]
    value: str


def _trim_link(url: str) -> str:
    # "see https://x.org/a." -> the dot ends the sentence, not the URL; a closing parenthesis
    # belongs to the URL only if it opened one ("https://en.wikipedia.org/wiki/Foo_(bar)").
    while url and (
        url[-1] in _TRAILING_PUNCTUATION or (url[-1] == ")" and url.count("(") < url.count(")"))
    ):
        url = url[:-1]
    return url


def find_spans(text: str) -> list[Span]:
    """Links (http/https only), @mentions with a valid handle, and #tags in `text`, in order
    of position. Overlapping detections keep the first (a URL's "#fragment" is no tag)."""
    spans: list[Span] = []
    for match in _LINK.finditer(text):
        url = _trim_link(match.group(1))
        if len(url) > len("https://"):
            spans.append(Span(match.start(1), match.start(1) + len(url), "link", url))
    for match in _MENTION.finditer(text):
        handle = match.group(1).rstrip(".-")
        if is_valid_handle(handle):
            end = match.start(1) + len(handle)
            spans.append(Span(match.start(0), end, "mention", handle.lower()))
    for match in _TAG.finditer(text):
        tag = match.group(1).rstrip(_TRAILING_PUNCTUATION + ")")
        # A tag needs a character that is not a digit ("#1" is a number, not a tag).
        if tag and not tag.isdigit() and measure(tag) <= MAX_TAG_GRAPHEMES:
            spans.append(Span(match.start(0), match.start(1) + len(tag), "tag", tag))
    spans.sort(key=lambda s: s.start)
    kept: list[Span] = []
    for span in spans:
        if kept and span.start < kept[-1].end:
            continue
        kept.append(span)
    return kept


def facets_for(text: str, spans: list[Span], dids: Mapping[str, str]) -> list[dict[str, Any]]:
    """`app.bsky.richtext.facet` objects for `spans`, with UTF-8 byte offsets. A mention whose
    handle is not in `dids` (it did not resolve) gets no facet: the text stays plain."""
    facets: list[dict[str, Any]] = []
    for span in spans:
        feature: dict[str, Any]
        if span.kind == "link":
            feature = {"$type": "app.bsky.richtext.facet#link", "uri": span.value}
        elif span.kind == "mention":
            did = dids.get(span.value)
            if did is None:
                continue
            feature = {"$type": "app.bsky.richtext.facet#mention", "did": did}
        else:
            feature = {"$type": "app.bsky.richtext.facet#tag", "tag": span.value}
        facets.append(
            {
                "$type": "app.bsky.richtext.facet",
                "index": {
                    "byteStart": utf8_offset(text, span.start),
                    "byteEnd": utf8_offset(text, span.end),
                },
                "features": [feature],
            }
        )
    return facets


# ---- timestamps -----------------------------------------------------------------------------


def format_datetime(moment: datetime) -> str:
    """`moment` as "2024-03-01T12:00:00.123Z": UTC, milliseconds, a literal Z."""
    if moment.tzinfo is None:
        raise ValueError(
            f"format_datetime() needs a timezone-aware datetime, got {moment!r}; "
            "use datetime.now(UTC)."
        )
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_datetime(value: object) -> datetime | None:
    """A record's datetime string as an aware UTC datetime; None if it cannot be read.
    Records written by other clients may lack the zone (read as UTC) or be garbage."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


# ---- record keys ----------------------------------------------------------------------------

_B32_SORTABLE = "234567abcdefghijklmnopqrstuvwxyz"
_TID = re.compile(r"^[234567abcdefghij][234567abcdefghijklmnopqrstuvwxyz]{12}$")
# Derived TIDs carry a timestamp inside [2023-01-01, +2^44 µs ≈ 203 days): in the past, so no
# software that distrusts future TIDs trips over them, and far from the TIDs the PDS generates
# for records written today.
_TID_BASE_US = int(
    (datetime(2023, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC))
    / timedelta(microseconds=1)
)
_TID_SPAN_BITS = 44


def is_valid_tid(value: str) -> bool:
    """atproto TID syntax: 13 characters of base32-sortable, the top bit zero."""
    return _TID.match(value) is not None


def tid_for_key(key: str) -> str:
    """A TID-syntax record key that is a pure function of `key`.

    `app.bsky.feed.post` records must have TID keys (the PDS checks). The 64 bits are: a zero
    bit, a 53-bit microsecond timestamp (here `_TID_BASE_US` plus 44 hash bits) and a 10-bit
    clock id (10 more hash bits): 54 bits of SHA-256, so two keys collide with odds of about
    n²/2^55 (one in a few billion for 100,000 posts)."""
    digest = int.from_bytes(hashlib.sha256(f"plaudit-bluesky:{key}".encode()).digest()[:8], "big")
    timestamp = _TID_BASE_US + (digest >> 20) % (1 << _TID_SPAN_BITS)
    clock_id = digest & 0x3FF
    value = (timestamp << 10) | clock_id
    chars = []
    for _ in range(13):
        chars.append(_B32_SORTABLE[value & 31])
        value >>= 5
    return "".join(reversed(chars))
