"""The daemon's one HTTP port: ``/metrics``, the JSON control API and the status page.

This module only translates HTTP to ``Control`` calls and their models to JSON; what the calls
do is the daemon's business. Access: mutating calls (every POST) need ``Authorization: Bearer
<token>``; reads (GET) are open, because the port is bound to 127.0.0.1 by default and
Prometheus scrapes without a token. Put a reverse proxy with its own authentication in front
before binding the port to a public address.

Errors are JSON ``{"error": <code>, "message": <sentence>, "details": [...]}``: 400 bad JSON
or a request the daemon refuses, 401 missing or wrong token, 404 unknown path, 405 wrong
method, 409 conflicting state, 413 body too large, 422 invalid fields, 503 not available now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from plaudit.daemon._auth import bearer_matches
from plaudit.daemon._control import (
    Control,
    ControlConflict,
    ControlError,
    ControlUnavailable,
    GeneratedSample,
    GenerateRequest,
    PostsPage,
    StatusView,
    TrainingStartRequest,
)
from plaudit.daemon._logging import get_logger
from plaudit.daemon._metrics import Metrics

STATIC_DIR: Final = Path(__file__).with_name("static")
MAX_BODY_BYTES: Final = 64 * 1024
# Series the status page charts; the controller records them with Store.record_metrics.
DEFAULT_HISTORY: Final = "loss,reward,kl"
_NAMES_PATTERN: Final = r"^[A-Za-z0-9_.:]{1,64}(,[A-Za-z0-9_.:]{1,64}){0,19}$"
# The page is self-contained: scripts, styles and data come from this origin only.
_PAGE_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

log = get_logger("plaudit.http")
M = TypeVar("M", bound=BaseModel)


# -- API models (only what the HTTP layer adds around the Control models) -------------------


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ErrorBody(_ApiModel):
    error: str = Field(description="Machine-readable code, e.g. unauthorized, invalid_request")
    message: str = Field(description="What went wrong and how to fix it, in one sentence")
    details: list[dict[str, Any]] | None = None


class GenerateResponse(_ApiModel):
    samples: list[GeneratedSample]


class MetricHistory(_ApiModel):
    since: float
    # A pair as a 2-item list, not a tuple: schemathesis mishandles JSON Schema prefixItems.
    series: dict[str, list[Annotated[list[float], Field(min_length=2, max_length=2)]]] = Field(
        description="For each requested name, [unix time, value] pairs in time order"
    )


class PostsQuery(_ApiModel):
    limit: int = Field(default=20, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=1_000_000_000)
    face: str | None = Field(default=None, min_length=1, max_length=128)


class HistoryQuery(_ApiModel):
    names: str = Field(
        default=DEFAULT_HISTORY,
        pattern=_NAMES_PATTERN,
        description="Comma-separated series names (at most 20)",
    )
    since: float = Field(default=0.0, ge=0.0, le=1e11, description="Unix time; 0 for all")


class ApiError(Exception):
    def __init__(
        self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details


def _error(
    status: int,
    code: str,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = ErrorBody(error=code, message=message, details=details)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": ".".join(str(p) for p in err["loc"]) or "(body)", "problem": err["msg"]}
        for err in exc.errors(include_url=False, include_input=False)
    ]


def _validate(model: type[M], data: Any, where: str) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        details = _validation_details(exc)
        summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
        raise ApiError(422, "invalid_request", f"invalid {where}: {summary}", details) from None


def _query(request: Request, model: type[M]) -> M:
    params = request.query_params
    duplicated = sorted({k for k in params if len(params.getlist(k)) > 1})
    if duplicated:
        raise ApiError(
            422, "invalid_request", f"query parameter given twice: {', '.join(duplicated)}"
        )
    return _validate(model, dict(params), "query parameters")


async def _body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise ApiError(
            413, "body_too_large", f"request body is over {MAX_BODY_BYTES} bytes; send less"
        )
    if not raw.strip():
        data: Any = {}
    else:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError(
                400, "invalid_json", f"request body is not valid JSON ({exc}); send an object"
            ) from None
    return _validate(model, data, "request body")


def _json(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


# -- the app --------------------------------------------------------------------------------


def build_app(
    *,
    control: Control,
    metrics: Metrics,
    token: str,
    static_dir: Path = STATIC_DIR,
) -> Starlette:
    """The ASGI app serving metrics, the control API and the status page."""
    if not token:
        raise ValueError("the API token must not be empty: use ensure_token() to get one")
    index = static_dir / "index.html"
    if not index.is_file():
        raise FileNotFoundError(
            f"status page {index} is missing: reinstall plaudit (the package ships it)"
        )
    spec = openapi_document()

    def protected(
        endpoint: str, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(request: Request) -> Response:
            if not bearer_matches(request.headers.get("authorization"), token):
                metrics.http_unauthorized.labels(endpoint).inc()
                log.warning("http unauthorized", endpoint=endpoint, client=_client(request))
                return _error(
                    401,
                    "unauthorized",
                    "this call needs the header 'Authorization: Bearer <token>' with the "
                    "daemon's API token (http.token, or the http-token file in the state folder)",
                    headers={"WWW-Authenticate": 'Bearer realm="plaudit"'},
                )
            return await handler(request)

        return guarded

    async def page(request: Request) -> Response:
        return FileResponse(index, media_type="text/html", headers=_PAGE_HEADERS)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi(request: Request) -> Response:
        return JSONResponse(spec)

    async def status(request: Request) -> Response:
        return _json(control.status())

    async def training_start(request: Request) -> Response:
        body = await _body(request, TrainingStartRequest)
        with _control_errors("training start"):
            view = await control.start_training(body)
        log.info("training started via api", mode=body.mode, client=_client(request))
        return _json(view)

    async def training_stop(request: Request) -> Response:
        await _body(request, _Empty)
        with _control_errors("training stop"):
            view = await control.stop_training()
        log.info("training stopped via api", client=_client(request))
        return _json(view)

    async def posts(request: Request) -> Response:
        query = _query(request, PostsQuery)
        with _control_errors("posts"):
            page_ = control.posts(limit=query.limit, offset=query.offset, face=query.face)
        return _json(page_)

    async def generate(request: Request) -> Response:
        body = await _body(request, GenerateRequest)
        with _control_errors("generate"):
            samples = await control.generate(body)
        return _json(GenerateResponse(samples=samples))

    async def history(request: Request) -> Response:
        query = _query(request, HistoryQuery)
        names = list(dict.fromkeys(query.names.split(",")))
        with _control_errors("metric history"):
            series = control.metric_history(names, since=query.since)
        data = {name: [[t, v] for t, v in points] for name, points in series.items()}
        return _json(MetricHistory(since=query.since, series=data))

    Handler = Callable[[Request], Awaitable[Response]]

    def safe(handler: Handler) -> Handler:
        # Errors become JSON here rather than in Starlette's exception handlers: a handler for
        # Exception there answers 500 but re-raises, so uvicorn logs every bug a second time.
        async def run(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return _error(exc.status, exc.code, exc.message, exc.details)
            except Exception as exc:
                log.error("http handler failed", path=request.url.path, exc_info=exc)
                return _error(
                    500,
                    "internal_error",
                    f"the daemon failed on {request.url.path} ({type(exc).__name__}); see its log",
                )

        return run

    routes = [
        Route("/", safe(page), methods=["GET"]),
        Route("/metrics", safe(metrics_endpoint), methods=["GET"]),
        Route("/openapi.json", safe(openapi), methods=["GET"]),
        Route("/api/status", safe(status), methods=["GET"]),
        Route(
            "/api/training/start",
            safe(protected("training_start", training_start)),
            methods=["POST"],
        ),
        Route(
            "/api/training/stop",
            safe(protected("training_stop", training_stop)),
            methods=["POST"],
        ),
        Route("/api/posts", safe(posts), methods=["GET"]),
        Route("/api/generate", safe(protected("generate", generate)), methods=["POST"]),
        Route("/api/metrics/history", safe(history), methods=["GET"]),
        Mount("/static", app=_StaticWithHeaders(directory=static_dir), name="static"),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = {
            404: f"no such path {request.url.path}; see /openapi.json for the API",
            405: f"{request.method} is not allowed on {request.url.path}",
        }.get(exc.status_code, str(exc.detail))
        return _error(exc.status_code, code, message, headers=exc.headers)

    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error},
    )


class _Empty(_ApiModel):
    """POST /api/training/stop takes no fields; an empty body or {} is fine."""


class _StaticWithHeaders(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_PAGE_HEADERS)
        return response


@contextlib.contextmanager
def _control_errors(what: str) -> Iterator[None]:
    """The daemon's refusals become 400/409/503 with its own message."""
    try:
        yield
    except ControlConflict as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    except ControlUnavailable as exc:
        raise ApiError(503, "unavailable", str(exc)) from None
    except ControlError as exc:
        raise ApiError(400, "refused", f"{what}: {exc}") from None


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


# -- OpenAPI --------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        return version("plaudit")
    except PackageNotFoundError:
        return "0+unknown"


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description, built from the same pydantic models the handlers use."""
    models: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (TrainingStartRequest, "validation"),
        (GenerateRequest, "validation"),
        (StatusView, "serialization"),
        (PostsPage, "serialization"),
        (GenerateResponse, "serialization"),
        (MetricHistory, "serialization"),
        (ErrorBody, "serialization"),
    ]
    refs, top = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = dict(top.get("$defs", {}))

    def ref(model: type[BaseModel], mode: Literal["validation", "serialization"]) -> Any:
        return refs[(model, mode)]

    def error(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"application/json": {"schema": ref(ErrorBody, "serialization")}},
        }

    def ok(model: type[BaseModel], description: str) -> dict[str, Any]:
        return {
            "200": {
                "description": description,
                "content": {"application/json": {"schema": ref(model, "serialization")}},
            }
        }

    def query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
        schema = model.model_json_schema()
        params = []
        for name, prop in schema["properties"].items():
            prop = dict(prop)
            description = prop.pop("description", None)
            prop.pop("title", None)
            if "anyOf" in prop:  # optional filter: absent means no filter, never null
                prop = next(s for s in prop.pop("anyOf") if s.get("type") != "null") | prop
                prop.pop("default", None)
            param = {"name": name, "in": "query", "required": False, "schema": prop}
            if description:
                param["description"] = description
            params.append(param)
        return params

    def body(model: type[BaseModel]) -> dict[str, Any]:
        return {
            "required": False,
            "content": {"application/json": {"schema": ref(model, "validation")}},
        }

    secured: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    mutating_errors = {
        "400": error("Malformed JSON, or the daemon refuses the request"),
        "401": error("Missing or wrong bearer token"),
        "409": error("The request conflicts with what the daemon is doing"),
        "413": error("Body larger than 64 KiB"),
        "422": error("A field is invalid"),
        "503": error("The daemon cannot do this right now (starting or stopping)"),
    }
    text = {"schema": {"type": "string"}}
    paths: dict[str, Any] = {
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The status page",
                "responses": {"200": {"description": "HTML", "content": {"text/html": text}}},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format)",
                "responses": {"200": {"description": "Metrics", "content": {"text/plain": text}}},
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/api/status": {
            "get": {
                "operationId": "status",
                "summary": "Training state, mode, policy version, faces and last rewards",
                "responses": ok(StatusView, "Current status"),
            }
        },
        "/api/training/start": {
            "post": {
                "operationId": "startTraining",
                "summary": "Start (resume) training; offline mode runs one supervised fit",
                "security": secured,
                "requestBody": body(TrainingStartRequest),
                "responses": ok(StatusView, "Status after the change") | mutating_errors,
            }
        },
        "/api/training/stop": {
            "post": {
                "operationId": "stopTraining",
                "summary": "Stop (pause) training; posting continues with the current policy",
                "security": secured,
                "responses": ok(StatusView, "Status after the change") | mutating_errors,
            }
        },
        "/api/posts": {
            "get": {
                "operationId": "posts",
                "summary": "The feed: posts with reactions and rewards, newest first",
                "parameters": query_params(PostsQuery),
                "responses": ok(PostsPage, "One page of posts")
                | {"400": error("Refused"), "422": error("Invalid query parameter")},
            }
        },
        "/api/generate": {
            "post": {
                "operationId": "generate",
                "summary": "Playground: sample from the current policy; nothing is published",
                "security": secured,
                "requestBody": body(GenerateRequest),
                "responses": ok(GenerateResponse, "Samples") | mutating_errors,
            }
        },
        "/api/metrics/history": {
            "get": {
                "operationId": "metricHistory",
                "summary": "Recorded series (loss, reward, kl, ...) for charts",
                "parameters": query_params(HistoryQuery),
                "responses": ok(MetricHistory, "Series")
                | {"400": error("Refused"), "422": error("Invalid query parameter")},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "plaudit",
            "version": _package_version(),
            "description": (
                "Control API of the plaudit daemon. POST calls need a bearer token; GET calls "
                "are open (the port is bound to 127.0.0.1 by default)."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


# -- serving in-process ---------------------------------------------------------------------


class _Server(uvicorn.Server):
    # The daemon owns SIGTERM/SIGINT/SIGHUP; uvicorn must not install its own handlers.
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HttpServer:
    """uvicorn running as a task on the daemon's event loop. ``stop()`` closes it cleanly."""

    def __init__(self, *, server: uvicorn.Server, task: asyncio.Task[None], sock: socket.socket):
        self._server = server
        self._task = task
        self.host, self.port = sock.getsockname()[:2]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, let open requests finish until ``timeout``, then close the rest."""
        if self._task.done():
            await self._task
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            self._server.force_exit = True
            await asyncio.wait_for(self._task, 2.0)
        log.info("http server stopped", url=self.url)


async def serve(app: Starlette, *, host: str, port: int) -> HttpServer:
    """Bind ``host:port`` (0 picks a free port) and serve ``app`` until ``stop()``.

    Binding happens here, before the daemon reports ready, so a port in use fails start-up
    with a clear message instead of killing the process from inside uvicorn."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno,
            f"cannot listen on {host}:{port} ({exc.strerror}): another program uses the port, "
            f"or the address is not on this machine; set http.port / http.host",
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http-server")
    deadline = time.monotonic() + 10.0
    while not server.started:
        if task.done():
            await task  # raises what uvicorn raised
            raise RuntimeError(f"http server on {host}:{port} exited during start-up")
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"http server on {host}:{port} did not start within 10 s")
        await asyncio.sleep(0.01)
    result = HttpServer(server=server, task=task, sock=sock)
    log.info("http server listening", url=result.url)
    return result
