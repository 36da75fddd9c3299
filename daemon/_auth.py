"""The API's bearer token: where it comes from and how a request's header is checked.

The token is the configured one (``http.token`` in the config, the environment or the
credentials folder) if set; otherwise the one in ``<state dir>/http-token``, generated at first
start with mode 0600 so that only the daemon's user (and root) can steer it."""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import Final

from pydantic import SecretStr

from plaudit.state import StateError, atomic_write_text

TOKEN_FILE: Final = "http-token"
_MIN_LENGTH: Final = 16


def ensure_token(config_token: SecretStr | None, state_dir: Path) -> str:
    """The token mutating calls must present; generated and stored on first use if unset."""
    if config_token is not None:
        token = config_token.get_secret_value().strip()
        if len(token) < _MIN_LENGTH or any(c.isspace() for c in token):
            raise ValueError(
                f"http.token must be at least {_MIN_LENGTH} characters without spaces; "
                f"generate one with: python -c 'import secrets; print(secrets.token_urlsafe())'"
            )
        return token
    path = state_dir / TOKEN_FILE
    stored = read_token_file(path)
    if stored is not None:
        return stored
    token = secrets.token_urlsafe(32)
    atomic_write_text(path, token + "\n", mode=0o600)
    return token


def read_token_file(path: Path) -> str | None:
    """The token stored in ``path``, or None when the file does not exist or is empty."""
    try:
        token = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(
            f"cannot read the API token in {path}: {exc.strerror}; fix its permissions or "
            f"delete it to have a new one generated"
        ) from None
    except UnicodeDecodeError:
        raise StateError(
            f"the API token file {path} is not text; delete it to have a new one generated"
        ) from None
    return token or None


def bearer_matches(header: str | None, token: str) -> bool:
    """True when an ``Authorization`` header carries exactly ``Bearer <token>``.

    The comparison takes the same time wherever the first difference is (hmac.compare_digest),
    so the token cannot be guessed a character at a time from response times."""
    if not header:
        return False
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode("utf-8"), token.encode("utf-8"))
