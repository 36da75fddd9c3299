"""A small synchronous client of the daemon's control API, for the CLI.

``plaudit status`` and ``plaudit train start|stop`` use it when the daemon is reachable; the
daemon writes its URL to ``<state dir>/http-url`` and (unless configured) its token to
``<state dir>/http-token`` at start.

Errors, one hierarchy:

ClientError              the call did not give an answer the CLI can use
├── DaemonUnreachable    nothing answers at the URL (daemon stopped, HTTP disabled)
├── Unauthorized         the daemon refused the token (401)
└── RequestRefused       the daemon answered with an error (4xx/5xx); the message is its own
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import httpx
from pydantic import BaseModel, SecretStr, ValidationError

from plaudit.daemon._auth import TOKEN_FILE, read_token_file
from plaudit.daemon._control import (
    ApprovalQueue,
    ApproveRequest,
    Decision,
    GeneratedSample,
    GenerateRequest,
    PostsPage,
    RejectRequest,
    StatusView,
    TrainingStartRequest,
)
from plaudit.state import StateError

URL_FILE: Final = "http-url"
M = TypeVar("M", bound=BaseModel)


class ClientError(Exception):
    """The daemon's API gave no usable answer; the message says why and what to do."""


class DaemonUnreachable(ClientError):
    """Nothing answers at the daemon's URL."""


class Unauthorized(ClientError):
    """The daemon refused the token."""


class RequestRefused(ClientError):
    """The daemon answered with an error status."""

    def __init__(self, message: str, *, status_code: int, code: str | None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code


class DaemonClient:
    """Calls the control API; every method returns the API's pydantic model."""

    def __init__(
        self,
        *,
        base_url: str,
        token: str | None,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DaemonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- calls -----------------------------------------------------------------------------

    def status(self) -> StatusView:
        return self._call("GET", "/api/status", StatusView)

    def start_training(
        self, mode: Literal["online", "offline"] | str = "online", **options: Any
    ) -> StatusView:
        """Start (resume) training; offline options: data, epochs, max_steps, lr, batch_size."""
        try:
            request = TrainingStartRequest.model_validate({"mode": mode, **options})
        except ValidationError as exc:
            raise ClientError(f"invalid training options: {_summary(exc)}") from None
        return self._call(
            "POST", "/api/training/start", StatusView, json=request.model_dump(exclude_none=True)
        )

    def stop_training(self) -> StatusView:
        return self._call("POST", "/api/training/stop", StatusView)

    def posts(self, *, limit: int = 20, offset: int = 0, face: str | None = None) -> PostsPage:
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if face is not None:
            params["face"] = face
        return self._call("GET", "/api/posts", PostsPage, params=params)

    def generate(self, request: GenerateRequest) -> list[GeneratedSample]:
        body = self._request("POST", "/api/generate", json=request.model_dump(exclude_none=True))
        return [GeneratedSample.model_validate(s) for s in body["samples"]]

    def approvals(self, *, face: str | None = None) -> ApprovalQueue:
        params = {"face": face} if face is not None else {}
        return self._call("GET", "/api/approvals", ApprovalQueue, params=params)

    def approve(self, post_id: int, *, text: str | None = None) -> Decision:
        request = ApproveRequest(post_id=post_id, text=text)
        return self._call(
            "POST", "/api/approvals/approve", Decision, json=request.model_dump(exclude_none=True)
        )

    def reject(self, post_id: int) -> Decision:
        request = RejectRequest(post_id=post_id)
        return self._call("POST", "/api/approvals/reject", Decision, json=request.model_dump())

    def metric_history(
        self, names: list[str], *, since: float = 0.0
    ) -> dict[str, list[tuple[float, float]]]:
        body = self._request(
            "GET", "/api/metrics/history", params={"names": ",".join(names), "since": since}
        )
        return {k: [(float(t), float(v)) for t, v in pts] for k, pts in body["series"].items()}

    # -- plumbing --------------------------------------------------------------------------

    def _call(self, method: str, path: str, model: type[M], **kwargs: Any) -> M:
        body = self._request(method, path, **kwargs)
        try:
            return model.model_validate(body)
        except ValidationError as exc:
            raise ClientError(
                f"the daemon at {self.base_url} answered {path} with an unexpected shape "
                f"({_summary(exc)}): is it the same plaudit version as this command?"
            ) from None

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        try:
            response = self._http.request(method, path, headers=headers, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise DaemonUnreachable(
                f"no plaudit daemon answers at {self.base_url} ({exc}); is it running with "
                f"[http] enabled?"
            ) from None
        except httpx.HTTPError as exc:
            raise ClientError(f"{method} {self.base_url}{path} failed: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code == 401:
            raise Unauthorized(
                f"the daemon at {self.base_url} refused the API token: pass the one in "
                f"http.token or in the state folder's {TOKEN_FILE} file"
            )
        if response.is_error:
            code = body.get("error") if isinstance(body, dict) else None
            message = body.get("message") if isinstance(body, dict) else None
            raise RequestRefused(
                f"{method} {path}: {message or response.reason_phrase} "
                f"(HTTP {response.status_code})",
                status_code=response.status_code,
                code=code,
            )
        if body is None:
            raise ClientError(f"{method} {path}: the daemon's answer is not JSON")
        return body


def _summary(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(value)'}: {e['msg']}" for e in exc.errors()
    )


def for_state_dir(
    folder: Path,
    *,
    token: SecretStr | str | None = None,
    timeout: float = 10.0,
) -> DaemonClient | None:
    """A client for the daemon that uses ``folder``, or None when no daemon answers there
    (no ``http-url`` file, HTTP disabled, or nothing listening): the caller falls back to
    signals or to reading the store. ``token``: the configured ``http.token``, if any;
    otherwise the daemon's generated token file is read."""
    try:
        url = (folder / URL_FILE).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ClientError(f"cannot read {folder / URL_FILE}: {exc.strerror}") from None
    if not url:
        return None
    if isinstance(token, SecretStr):
        token = token.get_secret_value()
    if token is None:
        try:
            token = read_token_file(folder / TOKEN_FILE)
        except StateError as exc:
            raise ClientError(str(exc)) from None
    client = DaemonClient(base_url=url, token=token, timeout=timeout)
    try:
        client.status()
    except DaemonUnreachable:
        client.close()
        return None
    except BaseException:
        client.close()
        raise
    return client
