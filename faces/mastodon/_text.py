"""Mastodon's text rules: how it counts a status against `max_characters`, and the plain text
of the HTML it serves.

Counting follows Mastodon's StatusLengthValidator: every URL (with http/https) counts as
`characters_reserved_per_url` (23) whatever its length, a remote mention `@user@domain` counts
as its local part `@user`, and the rest is counted in grapheme clusters (an emoji with skin tone
or a flag is one).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import regex

__all__ = ["countable_length", "html_to_text"]

# A URL as Mastodon's extractor finds it: a scheme, then anything up to white space; trailing
# punctuation (a full stop, a closing quote) is not part of it.
_URL = re.compile(r"(?<![\w@$#])https?://[^\s<>\"]+", re.IGNORECASE)
_URL_TAIL = re.compile(r"[^\w=#/+\-&]+$")
# Account::MENTION_RE: @user or @user@domain, not inside a word or URL.
_MENTION = re.compile(
    r"(?<![=/\w])@([a-z0-9_]+(?:[a-z0-9_.\-]+[a-z0-9_])?)(?:@[\w]+(?:[.\-]+[\w]+)*)?",
    re.IGNORECASE,
)
_GRAPHEME = regex.compile(r"\X")


def countable_length(text: str, *, url_chars: int = 23) -> int:
    """The length Mastodon counts for `text` (see the module docstring)."""
    spans: list[tuple[int, int, str]] = []
    for m in _URL.finditer(text):
        url = _URL_TAIL.sub("", m.group(0))
        if len(url) > len(m.group(0).split("://", 1)[0]) + 3:
            spans.append((m.start(), m.start() + len(url), "x" * url_chars))
    for m in _MENTION.finditer(text):
        if not any(start < m.end() and m.start() < end for start, end, _ in spans):
            spans.append((m.start(), m.end(), "@" + m.group(1)))
    spans.sort()
    out, pos = [], 0
    for start, end, replacement in spans:
        out.append(text[pos:start])
        out.append(replacement)
        pos = end
    out.append(text[pos:])
    return len(_GRAPHEME.findall("".join(out)))


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._paragraphs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "p":
            if self._paragraphs:
                self.parts.append("\n\n")
            self._paragraphs += 1

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_to_text(content: str) -> str:
    """The plain text of a status's `content` HTML: paragraphs split by a blank line, `<br>` as
    a newline, tags dropped (link texts kept whole: Mastodon hides parts of long URLs in
    `invisible` spans, whose text is joined back), entities decoded."""
    if "<" not in content:
        return html.unescape(content)
    parser = _TextExtractor()
    parser.feed(content)
    parser.close()
    return "".join(parser.parts)
