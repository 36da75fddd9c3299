"""bench/online.py reports what became of every candidate (its filter reason, or survived) and
can keep each run's state folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog
from bench_helpers import load_bench

from plaudit.state import NewCandidate, Store


def test_candidates_are_read_in_the_order_sampled_with_their_fate(tmp_path: Path) -> None:
    bench = load_bench()
    store = Store.open(tmp_path / "state")
    try:
        first = store.add_candidates(
            face=bench.FACE_NAME,
            cycle_id="c1",
            candidates=[NewCandidate(text=t) for t in ("a post", "Sure! Here is a post", "x")],
        )
        store.mark_filtered(first[1], reason="assistant")
        store.mark_filtered(first[2], reason="too_short")
        store.add_candidates(face="other", cycle_id="o", candidates=[NewCandidate(text="o")])
        store.add_candidates(
            face=bench.FACE_NAME, cycle_id="c2", candidates=[NewCandidate(text="b post")]
        )
        assert bench.candidate_fates(store) == ["survived", "assistant", "too_short", "survived"]
    finally:
        store.close()


def test_shares_by_third_of_the_run_and_over_seeds() -> None:
    bench = load_bench()

    def run(seed: int, fates: list[str]) -> object:
        return bench.RunResult(
            method="m",
            seed=seed,
            evals=[],
            published=[],
            ref_loss_last=0.0,
            updates=0,
            update_s=0.0,
            generate_s=0.0,
            eval_s=0.0,
            wall_s=0.0,
            candidates=fates,
        )

    talk_then_posts = ["assistant"] * 3 + ["survived", "novelty", "survived"] + ["survived"] * 3
    all_posts = ["survived"] * 6
    shares = bench.candidate_shares([run(0, talk_then_posts), run(1, all_posts)])
    assert shares["sampled"]["mean"] == 7.5
    assert shares["first_third"] == {"assistant": 0.5, "survived": 0.5}
    assert shares["last_third"] == {"survived": 1.0}
    assert shares["all"]["novelty"] == pytest.approx((1 / 9) / 2, abs=1e-4)
    assert sum(shares["all"].values()) == pytest.approx(1.0, abs=1e-3)


def test_keep_refuses_a_folder_holding_a_kept_run(tmp_path: Path) -> None:
    bench = load_bench()
    (tmp_path / "clipped-0").mkdir()
    with pytest.raises(SystemExit, match=r"clipped-0 is there already"):
        bench.parse_args(["--quick", "--keep", str(tmp_path)])
    assert bench.parse_args(["--quick", "--keep", str(tmp_path / "new")]).keep == tmp_path / "new"


@pytest.mark.usefixtures("one_torch_thread")
def test_a_kept_run_holds_every_candidate_the_results_count(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A short run of a model folder used as it is, two methods: each run's results count as
    many candidates as its kept store holds, and their shares add up."""
    bench = load_bench()
    keep = tmp_path / "runs"
    argv = ["--model", str(tiny_model_dir), "--methods", "reinforce,clipped", "--seeds", "0"]
    argv += ["--posts", "2", "--eval-every", "2", "--eval-samples", "2", "--json"]
    # main() points structlog at this test's captured stderr: put it back, or later tests log
    # to a closed file
    config = structlog.get_config()
    try:
        assert bench.main([*argv, "--keep", str(keep)]) == 0
    finally:
        structlog.configure(**config)
    results = json.loads(capsys.readouterr().out)
    for method in ("reinforce", "clipped"):
        counted = results["methods"][method]["candidates"]
        store = Store.open(keep / f"{method}-0" / "state")
        try:
            kept = store.posts(face=bench.FACE_NAME, limit=10_000)
        finally:
            store.close()
        assert counted["sampled"]["mean"] == len(kept) > 0
        assert sum(counted["all"].values()) == pytest.approx(1.0, abs=1e-3)
        assert counted["all"].get("survived", 0) * len(kept) == pytest.approx(
            sum(p.status.value != "filtered" for p in kept), abs=0.01
        )
