"""The assistant-talk filter against labelled SmolLM2 candidates and real history posts.

    .venv/bin/python bench/assistant_talk.py sample --n 500 --force  # new candidates to label
    .venv/bin/python bench/assistant_talk.py score [--json]     # the filter against the labels

`sample` draws candidates as the post cycle draws them (SmolLM2 as shipped, the posting prompt
showing two posts of the simulated face's history, the default sampling), unfiltered, into
the labelled set (controller/assistant_talk.jsonl, `plaudit.controller.TALK_EXAMPLES`) with
an empty label. The labels (`"assistant": true|false`, a person's reading: does the candidate
talk like a chat assistant or about its instructions — "Here's a new post:", "I'd be happy to
help", "Sure! ...", a post about "this community's style", a repeat of the instruction —
rather than read as a post by a member of the community?) are written into that file by hand
and committed with it. The daemon fits its talk head on that file (controller/_reward_model.py).

`score` reports the filter as the daemon runs it: the phrases and the prompt-echo check
(`talks_like_assistant`, each candidate with its prompt), then the reward model's talk head
(`fit_talk_head` on SmolLM2's features, a survivor above `TALK_THRESHOLD` caught). The head is
measured by two folds: fitted on one half of the labelled candidates (and 1,000 history
posts), scored on the other half (and on 1,200 other history posts), then the halves swapped.
Figures: the share of assistant talk that gets through (goal under 1%), the share of the
candidates labelled as posts that are dropped, and the share of the simulated face's real
history posts caught (goal under 2%; the phrases alone on all 4,200, the head on the 1,200 it
was not fitted on); for the phrases alone also by half (the first 250 chose the phrases); and
the trade the head's threshold makes, at each threshold of `SWEEP`: talk through, posts dropped,
history caught, and at the threshold where the head catches the goal's 2% of history.

How sure the labels are: `SECOND_READING` holds the same 500 candidates read again, blind to
the first labels, by a second reader given the question above (a helper session, 2026-12-05).
`score` reports the two readers' agreement (raw and Cohen's kappa), the share of one reader's
talk the other calls a post (a floor under "talk through" for any filter judged by one reader
and as good as the other), and the filter judged on the candidates both readers label alike.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

HELD_OUT = 250  # candidates [0, 250) chose the filter's phrases; the rest measure it
SWEEP = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)  # talk head thresholds shown
HISTORY_SCORED = 1200  # history posts the talk head was not fitted on, that it is scored on
HISTORY_ALLOWED = 0.02  # the goal: under 2% of real history posts caught
SECOND_READING = Path(__file__).with_name("assistant_talk_second_reading.jsonl")


def sample(n: int, seed: int, *, force: bool) -> None:
    from plaudit.controller import TALK_EXAMPLES, post_prompts
    from plaudit.faces.simulated import load_corpus
    from plaudit.learner import Policy, SamplingConfig

    if TALK_EXAMPLES.is_file() and not force:
        raise SystemExit(
            f"{TALK_EXAMPLES} holds the labelled candidates the daemon fits its talk head on; "
            "`sample --force` replaces them with new, unlabelled ones."
        )
    policy = Policy.load("smollm2", lr=1e-5)
    history = [p.text for p in load_corpus()]
    rng = random.Random(seed)
    asked = post_prompts(history=history, n=n, max_chars=280, rng=rng)
    texts = [p.instruction for p in asked]
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=60, seed=seed)
    prompts = [p.render(policy, room=sampling.max_new_tokens) for p in asked]
    rows: list[dict[str, Any]] = []
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
    with TALK_EXAMPLES.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} candidates to {TALK_EXAMPLES}; label them (assistant: true|false)")


def head_scores(
    rows: list[dict[str, Any]], history: list[str]
) -> tuple[dict[int, float], list[float]]:
    """Two folds of the talk head on SmolLM2's features: each labelled candidate's score from
    the head fitted on the other half, and the scores of unseen history posts (both folds)."""
    from plaudit.controller import TALK_HISTORY_POSTS, fit_talk_head
    from plaudit.learner import Policy, text_features

    policy = Policy.load("smollm2", lr=1e-5)
    reference = policy.reference if policy.reference is not None else policy.model
    # fitted on as many history posts as the daemon fits it on, scored on HISTORY_SCORED others
    shuffled = random.Random(0).sample(history, TALK_HISTORY_POSTS + HISTORY_SCORED)
    fit_on, scored_on = shuffled[:TALK_HISTORY_POSTS], shuffled[TALK_HISTORY_POSTS:]
    x = text_features(reference, policy.tokenizer, [r["text"] for r in rows])
    x_fit = text_features(reference, policy.tokenizer, fit_on)
    x_scored = text_features(reference, policy.tokenizer, scored_on)
    scores: dict[int, float] = {}
    history_scores: list[float] = []
    half = len(rows) // 2
    for fit_rows, scored_rows in ((range(half), range(half, len(rows))),
                                  (range(half, len(rows)), range(half))):  # fmt: skip
        head = fit_talk_head(
            x[list(fit_rows)], [float(rows[i]["assistant"]) for i in fit_rows], x_fit
        )
        predicted = head.predict(x[list(scored_rows)]).mean
        scores |= {rows[i]["id"]: float(v) for i, v in zip(scored_rows, predicted, strict=True)}
        history_scores += [float(v) for v in head.predict(x_scored).mean]
    return scores, history_scores


def shares(chunk: list[dict[str, Any]], caught: dict[int, bool]) -> dict[str, Any]:
    talk = [r for r in chunk if r["assistant"]]
    posts = [r for r in chunk if not r["assistant"]]
    return {
        "candidates": len(chunk),
        "assistant_talk": len(talk),
        "talk_getting_through": round(sum(not caught[r["id"]] for r in talk) / len(talk), 4),
        "posts_dropped": round(sum(caught[r["id"]] for r in posts) / len(posts), 4),
    }


def agreement(first: dict[int, bool], second: dict[int, bool]) -> dict[str, Any]:
    """How far two readings of the same candidates agree."""
    ids = sorted(first)
    n = len(ids)
    same = sum(first[i] == second[i] for i in ids) / n
    p1, p2 = sum(first.values()) / n, sum(second[i] for i in ids) / n
    chance = p1 * p2 + (1 - p1) * (1 - p2)
    talk1 = [i for i in ids if first[i]]
    talk2 = [i for i in ids if second[i]]
    return {
        "candidates": n,
        "agree": round(same, 4),
        "cohen_kappa": round((same - chance) / (1 - chance), 3),
        "talk_first_second": [len(talk1), len(talk2)],
        "first_talk_second_calls_post": round(sum(not second[i] for i in talk1) / len(talk1), 4),
        "second_talk_first_calls_post": round(sum(not first[i] for i in talk2) / len(talk2), 4),
    }


def score(as_json: bool) -> None:
    from plaudit.controller import TALK_EXAMPLES, TALK_THRESHOLD, talks_like_assistant
    from plaudit.faces.simulated import load_corpus

    rows = [json.loads(line) for line in TALK_EXAMPLES.read_text(encoding="utf-8").splitlines()]
    unlabelled = [r["id"] for r in rows if r["assistant"] is None]
    if unlabelled:
        raise SystemExit(f"{len(unlabelled)} candidates have no label yet (ids {unlabelled[:10]})")
    phrases = {r["id"]: talks_like_assistant(r["text"], r["instruction"]) for r in rows}
    history = [p.text for p in load_corpus()]
    history_caught = [t for t in history if talks_like_assistant(t)]
    out: dict[str, Any] = {
        "history_posts": len(history),
        "history_caught": round(len(history_caught) / len(history), 4),
    }
    # The filter's phrases were chosen looking at the first HELD_OUT: the rest is held out.
    parts = {"all": rows, "chosen_on": rows[:HELD_OUT], "held_out": rows[HELD_OUT:]}
    for part, chunk in parts.items():
        out[part] = shares(chunk, phrases)
    head, head_history = head_scores(rows, history)

    def with_head(threshold: float) -> dict[str, Any]:
        caught = {i: phrases[i] or head[i] > threshold for i in phrases}
        share = sum(v > threshold for v in head_history) / len(head_history)
        return shares(rows, caught) | {
            "threshold": threshold,
            "head_history_caught": round(share, 4),
        }

    out["with_talk_head"] = with_head(TALK_THRESHOLD)
    # The trade the threshold makes: talk through against posts dropped and history caught.
    out["thresholds"] = [with_head(t) for t in SWEEP]
    # The least talk through that the goal's allowance of history caught permits.
    allowed = sorted(head_history)[math.ceil(len(head_history) * (1 - HISTORY_ALLOWED)) - 1]
    out["at_history_allowed"] = with_head(allowed) | {"history_allowed": HISTORY_ALLOWED}
    second = {
        r["id"]: r["assistant"]
        for r in map(json.loads, SECOND_READING.read_text(encoding="utf-8").splitlines())
    }
    first = {r["id"]: r["assistant"] for r in rows}
    if set(second) != set(first):
        raise SystemExit(f"{SECOND_READING} reads other candidates than {TALK_EXAMPLES}")
    out["readers"] = agreement(first, second)
    alike = [r for r in rows if second[r["id"]] == r["assistant"]]
    caught_head = {i: phrases[i] or head[i] > TALK_THRESHOLD for i in phrases}
    out["readers_alike"] = shares(alike, caught_head)
    caught = {i: phrases[i] or head[i] > TALK_THRESHOLD for i in phrases}
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
            f"phrases, {part}: {f['candidates']} candidates, {f['assistant_talk']} labelled "
            f"assistant talk; {f['talk_getting_through']:.1%} of it gets through, "
            f"{f['posts_dropped']:.1%} of the posts are dropped"
        )
    n = len(history)
    print(
        f"phrases: real history posts caught: {len(history_caught)}/{n} ({out['history_caught']:.2%})"
    )
    f = out["with_talk_head"]
    print(
        f"phrases + talk head (two folds, threshold {TALK_THRESHOLD}): "
        f"{f['talk_getting_through']:.1%} of the talk gets through, {f['posts_dropped']:.1%} "
        f"of the posts are dropped; the head catches {f['head_history_caught']:.2%} of "
        f"{HISTORY_SCORED} unseen history posts"
    )
    print("threshold  talk through  posts dropped  history caught")
    for f in out["thresholds"]:
        print(
            f"{f['threshold']:9.2f}  {f['talk_getting_through']:12.1%}  "
            f"{f['posts_dropped']:13.1%}  {f['head_history_caught']:14.2%}"
        )
    f = out["at_history_allowed"]
    print(
        f"at the goal's {HISTORY_ALLOWED:.0%} of history caught (threshold "
        f"{f['threshold']:.3f}): {f['talk_getting_through']:.1%} of the talk gets through, "
        f"{f['posts_dropped']:.1%} of the posts are dropped"
    )
    r = out["readers"]
    print(
        f"two readers: agree on {r['agree']:.1%} of {r['candidates']} (Cohen's kappa "
        f"{r['cohen_kappa']}); talk {r['talk_first_second'][0]} and "
        f"{r['talk_first_second'][1]}; the second calls {r['first_talk_second_calls_post']:.1%} "
        f"of the first's talk a post, the first {r['second_talk_first_calls_post']:.1%} of the "
        "second's"
    )
    f = out["readers_alike"]
    print(
        f"on the {f['candidates']} candidates both readers label alike ({f['assistant_talk']} "
        f"talk), phrases + head at {TALK_THRESHOLD}: {f['talk_getting_through']:.1%} of the talk "
        f"gets through, {f['posts_dropped']:.1%} of the posts are dropped"
    )
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
    s.add_argument("--force", action="store_true", help="replace the labelled set")
    c = sub.add_parser("score")
    c.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.command == "sample":
        sample(args.n, args.seed, force=args.force)
    else:
        score(args.json)


if __name__ == "__main__":
    main()
