"""plaudit.faces.discord: the `discord` face (a text channel, through a bot and the HTTP API)."""

from ._face import DiscordConfig, DiscordFace, nonce_for, snowflake_at

__all__: list[str] = ["DiscordConfig", "DiscordFace", "nonce_for", "snowflake_at"]
