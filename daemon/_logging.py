"""The one logging pipeline: structlog for our code, stdlib loggers (httpx, apscheduler, uvicorn)
routed through the same processors. JSON lines when stdout is not a terminal (journald keeps
them), coloured console text on a terminal. Secrets never reach the output."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import structlog
from pydantic import SecretStr
from structlog.typing import Processor

_SECRET_KEY = re.compile(r"(token|password|secret|authorization|api_key|apikey)", re.I)
_BEARER = re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+")
# Telegram puts the bot token in the URL path (httpx logs URLs at debug level).
_URL_TOKEN = re.compile(r"(/bot)\d+:[A-Za-z0-9_-]+")
REDACTED = "**********"


def redact_secrets(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Blank values of secret-looking keys, SecretStr values and bearer tokens inside strings.
    A number is never a secret: `kl_per_token` or `max_new_tokens` stay readable."""
    for key, value in list(event_dict.items()):
        if isinstance(value, SecretStr) or (
            _SECRET_KEY.search(key) and not isinstance(value, (int, float, type(None)))
        ):
            event_dict[key] = REDACTED
        elif isinstance(value, str):
            value = _BEARER.sub(r"\1" + REDACTED, value)
            event_dict[key] = _URL_TOKEN.sub(r"\1" + REDACTED, value)
    return event_dict


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]


def configure_logging(
    *, level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Set up structlog and the stdlib root logger once, at process start."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(
            colors=sys.stdout.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
    )
    shared = _shared_processors()
    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if use_json else _identity,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at warning unless we debug.
    for name in ("httpx", "httpcore", "apscheduler", "uvicorn.access"):
        logging.getLogger(name).setLevel("DEBUG" if level == "debug" else "WARNING")


def _identity(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event_dict


def get_logger(name: str | None = None, **context: Any) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger.bind(**context) if context else logger
