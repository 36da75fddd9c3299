"""The daemon's offline fit, in the format posting uses against plain text: what each does to an
instruct model's posts.

    .venv/bin/python bench/offline_format.py                       # SmolLM2, 120 steps each
    .venv/bin/python bench/offline_format.py --steps 40 --samples 64 --json

One run loads SmolLM2 four times from the same weights: as it is (the "before"), fitted on the
simulated face's history as plain text (how the daemon fitted before), and fitted on the posting
instruction -> a history post (`OfflineFits.examples` for a model with a chat template), with
rows of whole examples (`packing = "auto"`, the default for data with prompts) and with the
examples streamed into rows cut at fixed intervals (`"stream"`, where a row boundary can cut a
post from its instruction). Each
gets the same fit budget (steps, batch, sequence length, learning rate) and is measured on the
same held-out posts of that history:

- posting loss: the mean loss per token of a held-out post as the answer to the posting
  instruction (the prompt the daemon samples from), the response tokens only;
- assistant talk: the share of candidates, sampled as the post cycle samples them (the posting
  prompt, the default sampling), that `talks_like_assistant` catches ("Here is a new post:",
  echoes of the instruction, ...), and the share the whole filter chain drops;
- distinct-2 and mean length of the candidates.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

from plaudit.controller import SYSTEM, post_prompts, talks_like_assistant
from plaudit.controller._prompts import fit_pairs
from plaudit.faces.simulated import load_corpus
from plaudit.learner import (
    OfflineTrainConfig,
    Policy,
    SamplingConfig,
    examples_from_pairs,
    examples_from_texts,
)
from plaudit.learner._data import IGNORE_INDEX, tokenize
from plaudit.learner._eval import distinct_n

MAX_CHARS = 280


def posting_loss(policy: Policy, pairs: list[tuple[str, str]]) -> float:
    """Mean loss per response token of ``pairs`` rendered as the daemon prompts (chat
    template, system message)."""
    data = tokenize(
        examples_from_pairs(pairs, source="held-out", system=SYSTEM),
        policy.tokenizer,
        chat_template=True,
    )
    model = policy.model
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ids, trained in zip(data.ids, data.trained, strict=True):
            x = torch.from_numpy(ids[:-1]).unsqueeze(0)
            y = torch.from_numpy(ids[1:].copy())
            y[~torch.from_numpy(trained[1:])] = IGNORE_INDEX
            loss = model(x, targets=y.unsqueeze(0))  # summed over trained targets
            total += float(loss)
            count += int((y != IGNORE_INDEX).sum())
    return total / max(count, 1)


def candidates(policy: Policy, history: list[str], n: int, seed: int) -> list[Any]:
    rng = random.Random(seed)
    sampling = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=60, seed=seed)
    prompts = [
        p.render(policy, room=sampling.max_new_tokens)
        for p in post_prompts(history=history, n=n, max_chars=MAX_CHARS, rng=rng)
    ]
    return policy.generate(prompts, n=1, sampling=sampling)


def measure(name: str, policy: Policy, held: list[tuple[str, str]], history: list[str],
            samples: int, samples_out: Path | None) -> dict[str, Any]:  # fmt: skip
    t0 = time.monotonic()
    loss = posting_loss(policy, held)
    cands = candidates(policy, history, samples, seed=1)
    texts = [c.text for c in cands]
    assistant = sum(talks_like_assistant(c.text, c.prompt) for c in cands)
    row = {
        "fit": name,
        "posting_loss": round(loss, 4),
        "assistant_talk": round(assistant / len(cands), 4),
        "unfinished": round(sum(not (c.finished or c.cut) for c in cands) / len(cands), 4),
        "distinct2": round(distinct_n(texts, 2), 4),
        "mean_chars": round(sum(len(t) for t in texts) / len(texts), 1),
        "samples": len(cands),
        "seconds": round(time.monotonic() - t0, 1),
    }
    if samples_out is not None:
        with samples_out.open("a", encoding="utf-8") as f:
            for c in cands:
                f.write(json.dumps({"fit": name, "text": c.text, "prompt": c.prompt}) + "\n")
    print(json.dumps(row), file=sys.stderr, flush=True)
    for t in texts[:4]:
        print(f"    {name}: {t[:110]!r}", file=sys.stderr, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--posts", type=int, default=2000, help="history posts the fits draw from")
    ap.add_argument("--held-out", type=int, default=100)
    ap.add_argument("--samples", type=int, default=100, help="candidates sampled per model")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--samples-out", type=Path, help="append every candidate here (JSON lines)")
    args = ap.parse_args()

    corpus = [p.text for p in load_corpus()]
    random.Random(0).shuffle(corpus)
    held_posts = corpus[: args.held_out]
    history = corpus[args.held_out : args.held_out + args.posts]
    # Held-out posts as answers to instructions that show posts of the fitted history.
    rng = random.Random(1)
    held = [
        (post_prompts(history=history, n=1, max_chars=MAX_CHARS, rng=rng)[0].instruction, post)
        for post in held_posts
    ]
    cfg = OfflineTrainConfig(
        model=args.model,
        max_steps=args.steps,
        batch_size=args.batch,
        max_seq_len=args.seq_len,
        lr=args.lr,
        warmup_steps=min(10, args.steps // 10),
        eval_every=10_000,
        save_every=10_000,
        samples=0,
        val_split=0.0,
        device="cpu",
    )
    rows = []
    posting = examples_from_pairs(
        fit_pairs(history, max_chars=MAX_CHARS, rng=random.Random(0)),
        source="history",
        system=SYSTEM,
    )
    fits = {
        "none": (None, "auto"),
        "plain text": (examples_from_texts(history, source="history"), "auto"),
        "posting, stream": (posting, "stream"),
        "posting format": (posting, "auto"),
    }
    for name, (examples, packing) in fits.items():
        policy = Policy.load(args.model, lr=args.lr)
        fit_s = 0.0
        if examples is not None:
            t0 = time.monotonic()
            policy.fine_tune(cfg.model_copy(update={"packing": packing}), examples=examples)
            fit_s = time.monotonic() - t0
        row = measure(name, policy, held, history, args.samples, args.samples_out)
        row["fit_seconds"] = round(fit_s, 1)
        rows.append(row)
        del policy
    out = {"config": vars(args), "threads": torch.get_num_threads(), "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'fit':<16}{'posting loss':>14}{'assistant':>11}{'unfinished':>12}{'distinct-2':>12}"
          f"{'chars':>8}{'fit s':>8}")  # fmt: skip
    for r in rows:
        print(f"{r['fit']:<16}{r['posting_loss']:>14.4f}{r['assistant_talk']:>11.1%}"
              f"{r['unfinished']:>12.1%}{r['distinct2']:>12.3f}{r['mean_chars']:>8.0f}"
              f"{r['fit_seconds']:>8.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
