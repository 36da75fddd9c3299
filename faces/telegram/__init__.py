"""plaudit.faces.telegram: the `telegram` face (a channel, through the Telegram Bot API)."""

from ._face import TelegramConfig, TelegramFace, utf16_length

__all__: list[str] = ["TelegramConfig", "TelegramFace", "utf16_length"]
