"""The daemon's one HTTP port: ``/metrics``, the JSON control API and the status page.

This module only translates HTTP to ``Control`` calls and their models to JSON; what the calls
do is the daemon's business. Every operation is declared once, in ``ENDPOINTS``: the routes and
the OpenAPI document (``/openapi.json``) both come from that list.

Access: mutating calls (every POST) need ``Authorization: Bearer <token>``; reads (GET) are
open, because the port is bound to 127.0.0.1 by default and Prometheus scrapes without a token.
Put a reverse proxy with its own authentication in front before binding the port to a public
address.

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
from dataclasses import dataclass, field
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
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from plaudit.daemon._auth import bearer_matches
from plaudit.daemon._control import (
    ApprovalQueue,
    ApproveRequest,
    Control,
    ControlConflict,
    ControlError,
    ControlUnavailable,
    Decision,
    GeneratedSample,
    GenerateRequest,
    PostsPage,
    RejectRequest,
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


class ApprovalsQuery(_ApiModel):
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


def _field_name(loc: tuple[int | str, ...]) -> str:
    # A client's unknown key is echoed back: shown quoted when it holds control characters,
    # and cut short, so that a message stays one readable line.
    name = ".".join(str(p) for p in loc) or "(body)"
    name = name if name.isprintable() else repr(name)
    return name if len(name) <= 80 else name[:77] + "..."


def _validation_details(exc: ValidationError) -> list[dict[str, Any]]:
    return [
        {"field": _field_name(tuple(err["loc"])), "problem": err["msg"]}
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
        except RecursionError:  # the parser recurses once per level: 30,000 "[" end here
            raise ApiError(
                400,
                "invalid_json",
                "request body is nested too deeply to parse; send a flat JSON object",
            ) from None
        except ValueError as exc:  # bad JSON or UTF-8, or an integer of over 4300 digits
            raise ApiError(
                400, "invalid_json", f"request body is not valid JSON ({exc}); send an object"
            ) from None
    return _validate(model, data, "request body")


def _json(model: BaseModel) -> JSONResponse:
    return JSONResponse(model.model_dump(mode="json"))


# -- the endpoints, declared once: the routes and the OpenAPI paths both come from ENDPOINTS -


@dataclass(frozen=True)
class _Api:
    """What every handler works with; one per app."""

    control: Control
    metrics: Metrics
    index: Path
    spec: dict[str, Any]


@dataclass(frozen=True)
class Call:
    """One request, its inputs already validated against the endpoint's declared models."""

    request: Request
    parsed_body: BaseModel | None = None
    parsed_query: BaseModel | None = None

    def body(self, model: type[M]) -> M:
        return _declared(self.parsed_body, model)

    def query(self, model: type[M]) -> M:
        return _declared(self.parsed_query, model)


def _declared(value: BaseModel | None, model: type[M]) -> M:
    if not isinstance(value, model):  # the handler reads a model its endpoint does not declare
        raise TypeError(f"the endpoint declares {type(value).__name__}, not {model.__name__}")
    return value


Handler = Callable[[_Api, Call], Awaitable[Response]]


@dataclass(frozen=True)
class Raw:
    """A reply that is not one of the API's JSON models."""

    media_type: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """One operation of the port. Its route, its checks (token, body, query), how the daemon's
    refusals answer, and its OpenAPI operation all come from this declaration."""

    method: Literal["GET", "POST"]
    path: str
    # snake_case: the metric label of refused tokens and the prefix of refusal messages.
    name: str
    operation_id: str
    summary: str
    handler: Handler
    reply: type[BaseModel] | Raw
    reply_description: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    auth: bool = False
    # What the Control call may answer when it refuses: 400 (ControlError), 409
    # (ControlConflict), 503 (ControlUnavailable). Any other refusal is a bug and answers 500.
    refusals: tuple[Literal[400, 409, 503], ...] = ()

    def errors(self) -> dict[int, str]:
        """Every error status this endpoint answers besides 404/405/500, with its meaning."""
        errors: dict[int, str] = {}
        if self.auth:
            errors[401] = "Missing or wrong bearer token"
        if self.body is not None:
            errors[400] = "Malformed JSON" + (
                ", or the daemon refuses the request" if 400 in self.refusals else ""
            )
            errors[413] = f"Body larger than {MAX_BODY_BYTES // 1024} KiB"
            errors[422] = "A field is invalid"
        elif 400 in self.refusals:
            errors[400] = "Refused"
        if self.query is not None:
            errors[422] = "Invalid query parameter"
        if 409 in self.refusals:
            errors[409] = "The request conflicts with what the daemon is doing"
        if 503 in self.refusals:
            errors[503] = "The daemon cannot do this right now (starting or stopping)"
        return dict(sorted(errors.items()))


class EmptyBody(_ApiModel):
    """No fields: an empty body or {}."""


async def _page(api: _Api, call: Call) -> Response:
    return FileResponse(api.index, media_type="text/html", headers=_PAGE_HEADERS)


async def _metrics(api: _Api, call: Call) -> Response:
    return Response(api.metrics.render(), media_type=CONTENT_TYPE_LATEST)


async def _openapi(api: _Api, call: Call) -> Response:
    return JSONResponse(api.spec)


async def _status(api: _Api, call: Call) -> Response:
    return _json(api.control.status())


async def _training_start(api: _Api, call: Call) -> Response:
    body = call.body(TrainingStartRequest)
    view = await api.control.start_training(body)
    log.info("training started via api", mode=body.mode, client=_client(call.request))
    return _json(view)


async def _training_stop(api: _Api, call: Call) -> Response:
    view = await api.control.stop_training()
    log.info("training stopped via api", client=_client(call.request))
    return _json(view)


async def _posts(api: _Api, call: Call) -> Response:
    query = call.query(PostsQuery)
    return _json(api.control.posts(limit=query.limit, offset=query.offset, face=query.face))


async def _generate(api: _Api, call: Call) -> Response:
    samples = await api.control.generate(call.body(GenerateRequest))
    return _json(GenerateResponse(samples=samples))


async def _approvals(api: _Api, call: Call) -> Response:
    return _json(api.control.approvals(face=call.query(ApprovalsQuery).face))


async def _approve(api: _Api, call: Call) -> Response:
    decision = api.control.approve(call.body(ApproveRequest))
    log.info(
        "held post approved via api",
        post_id=decision.id,
        approval=decision.approval,
        client=_client(call.request),
    )
    return _json(decision)


async def _reject(api: _Api, call: Call) -> Response:
    decision = api.control.reject(call.body(RejectRequest))
    log.info("held post rejected via api", post_id=decision.id, client=_client(call.request))
    return _json(decision)


async def _metric_history(api: _Api, call: Call) -> Response:
    query = call.query(HistoryQuery)
    names = list(dict.fromkeys(query.names.split(",")))
    series = api.control.metric_history(names, since=query.since)
    data = {name: [[t, v] for t, v in points] for name, points in series.items()}
    return _json(MetricHistory(since=query.since, series=data))


_REFUSALS: Final[tuple[Literal[400, 409, 503], ...]] = (400, 409, 503)

ENDPOINTS: Final[tuple[Endpoint, ...]] = (
    Endpoint(
        method="GET",
        path="/",
        name="page",
        operation_id="page",
        summary="The status page",
        handler=_page,
        reply=Raw("text/html"),
        reply_description="HTML",
    ),
    Endpoint(
        method="GET",
        path="/metrics",
        name="metrics",
        operation_id="metrics",
        summary="Prometheus metrics (text exposition format)",
        handler=_metrics,
        reply=Raw("text/plain"),
        reply_description="Metrics",
    ),
    Endpoint(
        method="GET",
        path="/openapi.json",
        name="openapi",
        operation_id="openapi",
        summary="This document",
        handler=_openapi,
        reply=Raw("application/json", {"type": "object"}),
        reply_description="OpenAPI 3.1",
    ),
    Endpoint(
        method="GET",
        path="/api/status",
        name="status",
        operation_id="status",
        summary="Training state, mode, policy version, faces and last rewards",
        handler=_status,
        reply=StatusView,
        reply_description="Current status",
    ),
    Endpoint(
        method="POST",
        path="/api/training/start",
        name="training_start",
        operation_id="startTraining",
        summary="Start (resume) training; offline mode runs one supervised fit",
        handler=_training_start,
        reply=StatusView,
        reply_description="Status after the change",
        body=TrainingStartRequest,
        auth=True,
        refusals=_REFUSALS,
    ),
    Endpoint(
        method="POST",
        path="/api/training/stop",
        name="training_stop",
        operation_id="stopTraining",
        summary="Stop (pause) training; posting continues with the current policy",
        handler=_training_stop,
        reply=StatusView,
        reply_description="Status after the change",
        body=EmptyBody,
        auth=True,
        refusals=_REFUSALS,
    ),
    Endpoint(
        method="GET",
        path="/api/posts",
        name="posts",
        operation_id="posts",
        summary="The feed: posts with reactions and rewards, newest first",
        handler=_posts,
        reply=PostsPage,
        reply_description="One page of posts",
        query=PostsQuery,
        refusals=(400,),
    ),
    Endpoint(
        method="POST",
        path="/api/generate",
        name="generate",
        operation_id="generate",
        summary="Playground: sample from the current policy; nothing is published",
        handler=_generate,
        reply=GenerateResponse,
        reply_description="Samples",
        body=GenerateRequest,
        auth=True,
        refusals=_REFUSALS,
    ),
    Endpoint(
        method="GET",
        path="/api/approvals",
        name="approvals",
        operation_id="approvals",
        summary="The approval queue: posts held for a decision, then approved ones not yet out",
        handler=_approvals,
        reply=ApprovalQueue,
        reply_description="The queue and its settings",
        query=ApprovalsQuery,
        refusals=(400,),
    ),
    Endpoint(
        method="POST",
        path="/api/approvals/approve",
        name="approve",
        operation_id="approve",
        summary="Approve a held post, as it is or edited (an edit trains the reward model only)",
        handler=_approve,
        reply=Decision,
        reply_description="The post as decided",
        body=ApproveRequest,
        auth=True,
        refusals=(400, 409),
    ),
    Endpoint(
        method="POST",
        path="/api/approvals/reject",
        name="reject",
        operation_id="reject",
        summary="Reject a held post: never published; it trains with approval.rejected_reward",
        handler=_reject,
        reply=Decision,
        reply_description="The post as decided",
        body=RejectRequest,
        auth=True,
        refusals=(400, 409),
    ),
    Endpoint(
        method="GET",
        path="/api/metrics/history",
        name="metric_history",
        operation_id="metricHistory",
        summary="Recorded series (loss, reward, kl, ...) for charts",
        handler=_metric_history,
        reply=MetricHistory,
        reply_description="Series",
        query=HistoryQuery,
        refusals=(400,),
    ),
)


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
    api = _Api(control=control, metrics=metrics, index=index, spec=openapi_document())
    routes: list[BaseRoute] = [
        Route(ep.path, _serve(api, ep, token), methods=[ep.method]) for ep in ENDPOINTS
    ]
    routes.append(Mount("/static", app=_StaticWithHeaders(directory=static_dir), name="static"))

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


def _serve(api: _Api, ep: Endpoint, token: str) -> Callable[[Request], Awaitable[Response]]:
    """The route's endpoint: token, inputs and refusals as ``ep`` declares them."""

    async def run(request: Request) -> Response:
        # Errors become JSON here rather than in Starlette's exception handlers: a handler for
        # Exception there answers 500 but re-raises, so uvicorn logs every bug a second time.
        try:
            if ep.auth and not bearer_matches(request.headers.get("authorization"), token):
                return _unauthorized(api.metrics, ep.name, request)
            call = Call(
                request=request,
                parsed_body=await _body(request, ep.body) if ep.body else None,
                parsed_query=_query(request, ep.query) if ep.query else None,
            )
            with _control_errors(ep):
                return await ep.handler(api, call)
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


def _unauthorized(metrics: Metrics, endpoint: str, request: Request) -> Response:
    metrics.http_unauthorized.labels(endpoint).inc()
    log.warning("http unauthorized", endpoint=endpoint, client=_client(request))
    return _error(
        401,
        "unauthorized",
        "this call needs the header 'Authorization: Bearer <token>' with the "
        "daemon's API token (http.token, or the http-token file in the state folder)",
        headers={"WWW-Authenticate": 'Bearer realm="plaudit"'},
    )


class _StaticWithHeaders(StaticFiles):
    async def get_response(self, path: str, scope: Any) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(_PAGE_HEADERS)
        return response


@contextlib.contextmanager
def _control_errors(ep: Endpoint) -> Iterator[None]:
    """The daemon's refusals become 400/409/503 with its own message, where ``ep`` declares
    them; an undeclared one propagates (and answers 500), so the document never lies."""
    try:
        yield
    except ControlError as exc:
        if isinstance(exc, ControlConflict):
            error = ApiError(409, "conflict", str(exc))
        elif isinstance(exc, ControlUnavailable):
            error = ApiError(503, "unavailable", str(exc))
        else:
            error = ApiError(400, "refused", f"{ep.name.replace('_', ' ')}: {exc}")
        if error.status not in ep.refusals:
            raise
        raise error from None


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"


# -- OpenAPI --------------------------------------------------------------------------------


def _package_version() -> str:
    try:
        return version("plaudit")
    except PackageNotFoundError:
        return "0+unknown"


_SchemaMode = Literal["validation", "serialization"]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of ENDPOINTS, from the pydantic models the handlers use."""
    models: list[tuple[type[BaseModel], _SchemaMode]] = [(ErrorBody, "serialization")]
    for ep in ENDPOINTS:
        if ep.body is not None:
            models.append((ep.body, "validation"))
        if not isinstance(ep.reply, Raw):
            models.append((ep.reply, "serialization"))
    refs, top = models_json_schema(
        list(dict.fromkeys(models)), ref_template="#/components/schemas/{model}"
    )

    def content(schema: Any, media_type: str = "application/json") -> dict[str, Any]:
        return {media_type: {"schema": schema}}

    def operation(ep: Endpoint) -> dict[str, Any]:
        reply = (
            content(ep.reply.schema, ep.reply.media_type)
            if isinstance(ep.reply, Raw)
            else content(refs[(ep.reply, "serialization")])
        )
        op: dict[str, Any] = {"operationId": ep.operation_id, "summary": ep.summary}
        if ep.auth:
            op["security"] = [{"bearerAuth": []}]
        if ep.body is not None:
            op["requestBody"] = {
                # An empty body reads as {}: required only where a field has no default.
                "required": any(f.is_required() for f in ep.body.model_fields.values()),
                "content": content(refs[(ep.body, "validation")]),
            }
        if ep.query is not None:
            op["parameters"] = _query_parameters(ep.query)
        op["responses"] = {"200": {"description": ep.reply_description, "content": reply}} | {
            str(status): {
                "description": description,
                "content": content(refs[(ErrorBody, "serialization")]),
            }
            for status, description in ep.errors().items()
        }
        return op

    paths: dict[str, Any] = {}
    for ep in ENDPOINTS:
        paths.setdefault(ep.path, {})[ep.method.lower()] = operation(ep)
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
            "schemas": dict(top.get("$defs", {})),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    params = []
    for name, prop in model.model_json_schema()["properties"].items():
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
