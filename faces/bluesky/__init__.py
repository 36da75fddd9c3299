"""plaudit.faces.bluesky: the `bluesky` face (atproto, app-password session).

See `_face.py` for what it does and how it is configured; `_text.py` holds the Bluesky text
rules (graphemes, facets, timestamps, record keys) and `_xrpc.py` the session and the error
mapping."""

from ._face import BlueskyConfig, BlueskyFace
from ._text import (
    MAX_GRAPHEMES,
    MAX_TEXT_BYTES,
    Span,
    facets_for,
    find_spans,
    format_datetime,
    measure,
    parse_datetime,
    tid_for_key,
)
from ._xrpc import Session, SessionStore, error_for_xrpc

__all__: list[str] = [
    "MAX_GRAPHEMES",
    "MAX_TEXT_BYTES",
    "BlueskyConfig",
    "BlueskyFace",
    "Session",
    "SessionStore",
    "Span",
    "error_for_xrpc",
    "facets_for",
    "find_spans",
    "format_datetime",
    "measure",
    "parse_datetime",
    "tid_for_key",
]
