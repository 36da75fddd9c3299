"""The assistant-talk filter against labelled SmolLM2 candidates and real history posts.

    .venv/bin/python bench/assistant_talk.py sample --n 500     # candidates -> bench/data/
    .venv/bin/python bench/assistant_talk.py score [--json]     # the filter against the labels

`sample` draws candidates as the post cycle draws them (SmolLM2 as shipped, the posting prompt
showing two posts of the simulated face's history, the default sampling), unfiltered, into
bench/data/assistant_talk.jsonl with an empty label. The labels (`"assistant": true|false`,
a person's reading: does the candidate talk like a chat assistant or about its instructions —
"Here's a new post:", "I'd be happy to help", "Sure! ...", a post about "this community's
style", a repeat of the instruction — rather than read as a post by a member of the
community?) are written into that file by hand and committed with it. `score` reports, for
the filter as it is now (`talks_like_assistant`, with each candidate's prompt for the echo
check): the share of assistant talk that gets through (goal under 1%), the share of the
candidates labelled as posts it drops, and the share of the simulated face's real history posts
it catches (goal under 2%); for all 500, for the first 250 (the filter's phrases were chosen
looking at them) and for the other 250 (held out).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("data") / "assistant_talk.jsonl"
HELD_OUT = 250  # candidates [0, 250) chose the filter's phrases; the rest measure it


def sample(n: int, seed: int) -> None:
    from plaudit.controller import SYSTEM, instructions
    from plaudit.faces.simulated import load_corpus
    from plaudit.learner import Policy, SamplingConfig

    policy = Policy.load("smollm2", lr=1e-5)
    history = [p.text for p in load_corpus()]
    rng = random.Random(seed)
    texts = instructions(history=history, n=n, max_chars=280, rng=rng)
    prompts = [policy.render_prompt(t, system=SYSTEM) for t in texts]
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=60, seed=seed)
    rows = []
    for lo in range(0, n, 50):
        for c, instruction in zip(
            policy.generate(prompts[lo : lo + 50], n=1, sampling=sampling),
            texts[lo : lo + 50],
            strict=True,
        ):
            rows.append(
                {
                    "id": len(rows),
                    "text": c.text,
                    "instruction": instruction,
                    "finished": c.finished,
                    "cut": c.cut,
                    "assistant": None,
                }
            )
        print(f"{len(rows)}/{n}", file=sys.stderr, flush=True)
    DATA.parent.mkdir(exist_ok=True)
    with DATA.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} candidates to {DATA}; label them (assistant: true|false)")


def score(as_json: bool) -> None:
    from plaudit.controller import talks_like_assistant
    from plaudit.faces.simulated import load_corpus

    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines()]
    unlabelled = [r["id"] for r in rows if r["assistant"] is None]
    if unlabelled:
        raise SystemExit(f"{len(unlabelled)} candidates have no label yet (ids {unlabelled[:10]})")
    caught = {r["id"]: talks_like_assistant(r["text"], r["instruction"]) for r in rows}
    history = [p.text for p in load_corpus()]
    history_caught = [t for t in history if talks_like_assistant(t)]
    out: dict[str, Any] = {
        "history_posts": len(history),
        "history_caught": round(len(history_caught) / len(history), 4),
    }
    # The filter's phrases were chosen looking at the first HELD_OUT: the rest is held out.
    parts = {"all": rows, "chosen_on": rows[:HELD_OUT], "held_out": rows[HELD_OUT:]}
    for part, chunk in parts.items():
        talk = [r for r in chunk if r["assistant"]]
        posts = [r for r in chunk if not r["assistant"]]
        out[part] = {
            "candidates": len(chunk),
            "assistant_talk": len(talk),
            "talk_getting_through": round(sum(not caught[r["id"]] for r in talk) / len(talk), 4),
            "posts_dropped": round(sum(caught[r["id"]] for r in posts) / len(posts), 4),
        }
    missed = [r for r in rows if r["assistant"] and not caught[r["id"]]]
    dropped = [r for r in rows if not r["assistant"] and caught[r["id"]]]
    out["missed_ids"] = [r["id"] for r in missed]
    out["dropped_ids"] = [r["id"] for r in dropped]
    if as_json:
        print(json.dumps(out, indent=2))
        return
    for part in parts:
        f = out[part]
        print(
            f"{part}: {f['candidates']} candidates, {f['assistant_talk']} labelled assistant "
            f"talk; {f['talk_getting_through']:.1%} of it gets through, "
            f"{f['posts_dropped']:.1%} of the posts are dropped"
        )
    n = len(history)
    print(f"real history posts caught: {len(history_caught)}/{n} ({out['history_caught']:.2%})")
    for r in missed:
        print(f"  missed {r['id']}: {r['text'][:120]!r}")
    for r in dropped:
        print(f"  dropped {r['id']}: {r['text'][:120]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("sample")
    s.add_argument("--n", type=int, default=500)
    s.add_argument("--seed", type=int, default=7)
    c = sub.add_parser("score")
    c.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.command == "sample":
        sample(args.n, args.seed)
    else:
        score(args.json)


if __name__ == "__main__":
    main()
