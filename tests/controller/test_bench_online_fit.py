"""bench/online.py --fit-steps on a pretrained model: fitted on the face's history as the
daemon's first offline fit (an instruct model in the posting format), saved with its chat
template, cached, and reused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from bench_helpers import load_bench

from plaudit.learner import Policy

# Fits on the whole simulated history (4,200 posts): tens of seconds on 2 cores.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_pretrained_instruct_model_is_fitted_as_the_daemon_fits_it(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    instruct = Policy.load(tiny_model_dir)
    instruct.tokenizer.chat_template = CHATML
    instruct.save(tmp_path / "instruct")
    before = {k: v.clone() for k, v in instruct.model.state_dict().items()}

    bench = load_bench()
    recipe = bench.DaemonFit(model=str(tmp_path / "instruct"), steps=2)
    said: list[str] = []
    model = bench.starting_model("simulated", {}, recipe.model, recipe, log=said.append)

    assert model == bench.fit_cache_dir("simulated", {}, recipe) / "model"
    assert str(model).startswith(str(tmp_path / "cache"))
    info = (model.parent / "fit.json").read_text()
    assert '"format": "jsonl"' in info and '"steps": 2' in info  # the posting format
    fitted = Policy.load(model)
    assert fitted.tokenizer.chat_template == CHATML  # it still posts through its template
    moved = fitted.model.state_dict()
    assert any(not torch.equal(before[k], moved[k]) for k in before)

    said.clear()
    assert bench.starting_model("simulated", {}, recipe.model, recipe, log=said.append) == model
    assert said == [f"starting model: {model.parent} (cached)"]
