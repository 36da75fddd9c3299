"""API inputs bounded to finite, sane ranges (issue 16, problems 2, 6 and 8): a seed beyond 64
bits, a body nested 30,000 deep, infinite or NaN numbers, an offline fit on a face that has no
history. Each gets a 4xx that names the problem, never a 500 or a 200 that does nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from http_helpers import TOKEN
from starlette.applications import Starlette

from plaudit.daemon._auth import TOKEN_FILE, ensure_token
from plaudit.daemon._service import ControlService
from plaudit.state import StateError, TrainingMode

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t", headers=AUTH) as c:
        yield c


@pytest.mark.parametrize("seed", [2**64, 2**63, -1, 10**30])
async def test_a_seed_out_of_range_is_422(client: httpx.AsyncClient, seed: int) -> None:
    response = await client.post("/api/generate", json={"n": 1, "seed": seed})
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["details"][0]["field"] == "seed"
    assert str(2**63 - 1) in body["message"] or "greater than or equal to 0" in body["message"]


async def test_the_largest_seed_generates(client: httpx.AsyncClient) -> None:
    request = {"n": 1, "seed": 2**63 - 1, "max_new_tokens": 4}
    response = await client.post("/api/generate", json=request)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/api/generate", "/api/training/start", "/api/training/stop"])
@pytest.mark.parametrize("body", [b"[" * 30_000, b'{"a":' * 12_000])  # under the 64 KiB cap
async def test_a_deeply_nested_body_is_400(
    client: httpx.AsyncClient, path: str, body: bytes
) -> None:
    response = await client.post(path, content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_json"
    assert "nested too deeply" in response.json()["message"]


async def test_an_integer_of_5000_digits_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/generate", content=b'{"seed": 1' + b"0" * 5000 + b"}")
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"mode": "offline", "epochs": Infinity}',
        b'{"mode": "offline", "lr": Infinity}',
        b'{"mode": "offline", "lr": NaN}',
        b'{"mode": "offline", "lr": 1e999}',
        b'{"mode": "offline", "epochs": -Infinity}',
        b'{"mode": "offline", "epochs": 1e12}',
        b'{"mode": "offline", "lr": 1e300}',
        b'{"mode": "offline", "max_steps": 100000000000000000000}',
        b'{"mode": "offline", "batch_size": 1000000000}',
    ],
)
async def test_infinite_or_absurd_training_numbers_are_422(
    client: httpx.AsyncClient, control: ControlService, body: bytes
) -> None:
    response = await client.post("/api/training/start", content=body)
    assert response.status_code == 422, response.text
    field = response.json()["details"][0]["field"]
    assert field in body.decode()
    assert control.store.control().mode is TrainingMode.ONLINE
    assert control.controller.offline_fits.request is None


async def test_a_temperature_just_above_zero_samples_greedily(client: httpx.AsyncClient) -> None:
    """Found by the schema test: logits divided by 1e-279 overflow, and the sampler then
    indexed past the vocabulary (a 500). Under 0.001 a temperature is taken as 0."""
    base = {"prompt": "Good morning", "n": 1, "max_new_tokens": 6, "seed": 3}
    tiny = await client.post("/api/generate", json=base | {"temperature": 1e-279})
    greedy = await client.post("/api/generate", json=base | {"temperature": 0})
    assert tiny.status_code == 200, tiny.text
    assert tiny.json() == greedy.json()


@pytest.mark.parametrize("body", [b'{"n": 1, "temperature": NaN}', b'{"n": 1, "top_p": NaN}'])
async def test_nan_sampling_numbers_are_422(client: httpx.AsyncClient, body: bytes) -> None:
    response = await client.post("/api/generate", content=body)
    assert response.status_code == 422, response.text


async def test_an_offline_fit_on_a_face_without_history_is_409(
    client: httpx.AsyncClient, control: ControlService
) -> None:
    """The `journal` face (type file, no history files) has nothing to fit on: the request
    used to answer 200, set mode offline and then skip the fit without a word."""
    response = await client.post("/api/training/start", json={"mode": "offline", "data": "journal"})
    assert response.status_code == 409, response.text
    message = response.json()["message"]
    assert "journal" in message and "no history" in message
    assert control.store.control().mode is TrainingMode.ONLINE
    assert control.controller.offline_fits.request is None


def test_a_binary_token_file_in_the_state_folder_names_the_file(tmp_path: Path) -> None:
    """The generated http-token file, overwritten with bytes that are not text: one error
    naming the file and the fix, where a UnicodeDecodeError traceback used to be."""
    (tmp_path / TOKEN_FILE).write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(StateError, match=f"{TOKEN_FILE}.*delete it"):
        ensure_token(None, tmp_path)
