"""plaudit.faces.mastodon: the `mastodon` face (a Mastodon account through its REST API)."""

from ._face import MastodonConfig, MastodonFace
from ._text import countable_length, html_to_text

__all__: list[str] = ["MastodonConfig", "MastodonFace", "countable_length", "html_to_text"]
