"""Property tests of the API's request bodies (issue 16): any bytes, any JSON, any values for the
real fields, on every POST endpoint, get 200 or a 4xx that says what is wrong, never a 500; and
what reaches the daemon is finite and within the declared ranges.

The HTTP layer is what is under test, so the daemon behind it is a stand-in that records each
request (a real one would start an offline fit for each valid body); tests/http/test_api.py
and test_api_inputs.py run the real ControlService."""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

import httpx
from http_helpers import TOKEN
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from plaudit.daemon._control import (
    MAX_SEED,
    GeneratedSample,
    GenerateRequest,
    PostsPage,
    RewardModelStatus,
    StatusView,
    TrainingStartRequest,
)
from plaudit.daemon._http import MAX_BODY_BYTES, build_app
from plaudit.daemon._metrics import Metrics

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
STATUS = StatusView(
    state="running",
    training="running",
    mode="online",
    policy_version=0,
    model="stand-in",
    faces=[],
    last_rewards=[],
    reward_model=RewardModelStatus(
        enabled=True,
        selection="thompson",
        fitted=False,
        own_posts=0,
        history_posts=0,
        loo_r2=None,
        talk_filter=False,
        spearman={},
        post_kinds={},
    ),
    uptime_seconds=1.0,
)


class RecordingControl:
    """Answers every call at once and keeps what it was asked."""

    def __init__(self) -> None:
        self.requests: list[BaseModel] = []

    def status(self) -> StatusView:
        return STATUS

    async def start_training(self, request: TrainingStartRequest) -> StatusView:
        self.requests.append(request)
        return STATUS

    async def stop_training(self) -> StatusView:
        return STATUS

    def posts(self, *, limit: int, offset: int, face: str | None) -> PostsPage:
        return PostsPage(posts=[], total=0, limit=limit, offset=offset)

    async def generate(self, request: GenerateRequest) -> list[GeneratedSample]:
        self.requests.append(request)
        return [GeneratedSample(text="hi", tokens=1, mean_logprob=-1.0)]

    def metric_history(
        self, names: list[str], *, since: float
    ) -> dict[str, list[tuple[float, float]]]:
        return {}


CONTROL = RecordingControl()
APP = build_app(
    control=CONTROL,
    metrics=Metrics(faces=[], version="test", model="stand-in", process=False),
    token=TOKEN,
)
ENDPOINTS = ["/api/generate", "/api/training/start", "/api/training/stop"]
FIELDS = sorted({*GenerateRequest.model_fields, *TrainingStartRequest.model_fields})

numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 2**63 - 1, 2**63, 2**64, 1e999, 1e-320]),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=30))
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=10,
)
field_bodies = st.dictionaries(
    st.sampled_from(FIELDS),
    st.one_of(json_values, st.sampled_from(["online", "offline", "sim", ""])),
    max_size=5,
)
bodies = st.one_of(
    field_bodies.map(lambda d: json.dumps(d, allow_nan=True).encode()),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.binary(max_size=300),
    st.integers(1, 40_000).map(lambda n: b"[" * n),
    st.integers(1, 10_000).map(lambda n: b'{"prompt":' * n + b"1" + b"}" * n),
    st.just(b"x" * (MAX_BODY_BYTES + 1)),
)


def finite_and_in_range(request: BaseModel) -> None:
    for name, value in request.model_dump().items():
        if isinstance(value, float):
            assert math.isfinite(value), (name, value)
    if isinstance(request, GenerateRequest) and request.seed is not None:
        assert 0 <= request.seed <= MAX_SEED


async def post(path: str, body: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=APP)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=headers) as c:
        return await c.post(path, content=body)


@PROPERTY
@given(path=st.sampled_from(ENDPOINTS), body=bodies)
def test_any_body_gets_a_result_or_a_4xx_never_a_500(path: str, body: bytes) -> None:
    before = len(CONTROL.requests)
    response = asyncio.run(post(path, body))
    assert response.status_code in (200, 400, 413, 422), (response.status_code, response.text)
    answer: dict[str, Any] = response.json()
    if response.status_code != 200:
        assert answer["message"] and "\n" not in answer["message"]
        assert len(CONTROL.requests) == before, "a refused body reaches nothing"
    for request in CONTROL.requests[before:]:
        finite_and_in_range(request)
