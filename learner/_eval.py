"""Evaluation of a trained model on a data set: does it write in the style, or does it copy?

- validation loss and perplexity on the held-out split (the same content-hash split training
  uses, so "held out" means held out);
- samples from held-out prompts (the first words of held-out posts, or held-out conversation
  prompts): distinct-1/2 and mean length, corpus BLEU-4 and mean ROUGE-L F1 against the
  held-out posts they were prompted from;
- memorisation: per sample, the longest run of tokens it shares with any training post (a
  suffix automaton over all training posts answers that in time linear in the sample), the
  share of samples whose run reaches `threshold` tokens, and the closest training post for the
  worst samples.

BLEU follows sacrebleu's corpus BLEU (clipped n-gram counts summed over the corpus, brevity
penalty, 'exp' smoothing of empty orders, 0-100); ROUGE-L follows rouge-score (LCS F1 on
lowercased word tokens). Words are runs of letters/digits or single punctuation marks.
"""

from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from . import _data

if TYPE_CHECKING:
    from ._model import Transformer
    from ._tokenizer import Tokenizer

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


# --- text metrics ---------------------------------------------------------------------------


def _ngrams(tokens: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU (0-100) of hypotheses against one reference each."""
    assert len(hypotheses) == len(references), "one reference per hypothesis"
    correct, total = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = words(hyp), words(ref)
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            correct[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(0, len(h) - n + 1)
    if hyp_len == 0:
        return 0.0
    log_sum, smooth = 0.0, 1.0
    for n in range(max_n):
        if total[n] == 0:
            return 0.0  # no n-grams of this order at all
        if correct[n] == 0:
            smooth *= 2  # sacrebleu's 'exp' smoothing
            precision = 1.0 / (smooth * total[n])
        else:
            precision = correct[n] / total[n]
        log_sum += math.log(precision)
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return 100.0 * bp * math.exp(log_sum / max_n)


def lcs_length(a: Sequence[Any], b: Sequence[Any]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row)."""
    if len(a) < len(b):
        a, b = b, a
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, start=1):
            cur = row[j]
            row[j] = prev + 1 if x == y else max(row[j], row[j - 1])
            prev = cur
    return row[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F1 (0-1) on lowercased words."""
    h = [w.lower() for w in words(hypothesis) if w[0].isalnum()]
    r = [w.lower() for w in words(reference) if w[0].isalnum()]
    if not h or not r:
        return 0.0
    lcs = lcs_length(h, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(h), lcs / len(r)
    return 2 * p * rec / (p + rec)


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams / all n-grams over all texts (lowercased words); 0 when there are none."""
    grams: Counter[tuple[str, ...]] = Counter()
    for t in texts:
        grams.update(_ngrams([w.lower() for w in words(t)], n))
    total = sum(grams.values())
    return len(grams) / total if total else 0.0


# --- memorisation ---------------------------------------------------------------------------


class SuffixAutomaton:
    """Suffix automaton of many token sequences (each ends in its own separator, so no match
    crosses two of them). `longest_match(q)` gives the longest run of q found in any sequence
    and which sequence holds it, in O(len(q))."""

    def __init__(self, sequences: Sequence[Sequence[int]]) -> None:
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        self.first_end: list[int] = [-1]  # end position of the first occurrence
        self.starts: list[int] = []  # where each sequence starts in the concatenation
        last, pos = 0, 0
        for i, seq in enumerate(sequences):
            self.starts.append(pos)
            for token in [*seq, -1 - i]:  # the separator is unique to sequence i
                last = self._extend(last, token, pos)
                pos += 1

    def _extend(self, last: int, token: int, pos: int) -> int:
        nxt, link, length, first_end = self.next, self.link, self.length, self.first_end
        cur = len(length)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        first_end.append(pos)
        p = last
        while p != -1 and token not in nxt[p]:
            nxt[p][token] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][token]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(length)
                nxt.append(dict(nxt[q]))
                length.append(length[p] + 1)
                link.append(link[q])
                first_end.append(first_end[q])
                while p != -1 and nxt[p].get(token) == q:
                    nxt[p][token] = clone
                    p = link[p]
                link[q] = link[cur] = clone
        return cur

    def longest_match(self, query: Sequence[int]) -> tuple[int, int | None]:
        """(length of the longest common run, index of a sequence that holds it or None)."""
        state, run, best, best_end = 0, 0, 0, -1
        nxt, link, length = self.next, self.link, self.length
        for token in query:
            while state and token not in nxt[state]:
                state = link[state]
                run = length[state]
            if token in nxt[state]:
                state = nxt[state][token]
                run += 1
            if run > best:
                best, best_end = run, self.first_end[state]
        if best == 0:
            return 0, None
        return best, bisect.bisect_right(self.starts, best_end) - 1


# --- the evaluation -------------------------------------------------------------------------


@dataclass
class SampleResult:
    prompt: str
    text: str  # what would be posted: prompt words + continuation, or the response
    reference: str  # the held-out post (or response) the prompt came from
    longest_run: int  # longest token run shared with a training post
    closest: str | None  # that training post


@dataclass
class EvalReport:
    val_loss: float | None
    perplexity: float | None
    val_tokens: int
    samples: list[SampleResult]
    distinct_1: float
    distinct_2: float
    mean_tokens: float
    mean_words: float
    bleu: float
    rouge_l: float
    threshold: int
    memorised_share: float
    mean_longest_run: float
    worst: list[SampleResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        out = []
        if self.val_loss is not None:
            out.append(
                f"validation loss {self.val_loss:.4f}, perplexity {self.perplexity:.2f} "
                f"({self.val_tokens:,} tokens)"
            )
        out += [
            f"samples {len(self.samples)}: distinct-1 {self.distinct_1:.3f}, distinct-2 "
            f"{self.distinct_2:.3f}, mean length {self.mean_tokens:.1f} tokens / "
            f"{self.mean_words:.1f} words",
            f"vs held-out posts: BLEU {self.bleu:.2f}, ROUGE-L {self.rouge_l:.3f}",
            f"memorisation: {self.memorised_share:.1%} of samples share a run of >= "
            f"{self.threshold} tokens with a training post (mean longest run "
            f"{self.mean_longest_run:.1f})",
        ]
        for s in self.worst:
            out.append(f"  run {s.longest_run}: {s.text!r}")
            out.append(f"    closest training post: {s.closest!r}")
        return out


def evaluate(
    *,
    model: Transformer,
    tokenizer: Tokenizer,
    train: Sequence[_data.Example],
    val: Sequence[_data.Example],
    n_samples: int = 32,
    max_new_tokens: int = 48,
    threshold: int = 10,
    seed: int = 1337,
    max_seq_len: int = 256,
    batch_size: int = 16,
    n_worst: int = 3,
    chat_template: bool = False,
    packing: _data.Packing = "auto",
) -> EvalReport:
    """Evaluate `model` on held-out `val` (loss, samples, text metrics) and check its samples
    against the `train` posts for copying."""
    from ._distributed import DistInfo
    from ._generate import sample_continuations
    from ._train import evaluate_loss

    device = next(model.parameters()).device
    val_loss = None
    val_tokens = 0
    if val:
        tok_val = _data.tokenize(val, tokenizer, chat_template=chat_template)
        pad = tokenizer.pad_id if tokenizer.pad_id is not None else (tokenizer.eos_id or 0)
        whole = _data.whole_examples(packing, val)
        x, y = _data.pack_rows(
            tok_val, range(len(tok_val)), seq_len=max_seq_len, pad_id=pad, whole=whole
        )
        val_tokens = int((y != _data.IGNORE_INDEX).sum())
        with torch.no_grad():
            val_loss = evaluate_loss(
                model, x, y, batch_size=batch_size, precision="fp32", dist=DistInfo(device=device)
            )

    # Prompts cycle through the held-out examples (the training ones if nothing is held out).
    pool = list(val) or list(train)
    chosen = [pool[i % len(pool)] for i in range(n_samples)]
    chat_tok = tokenizer if chat_template else None
    prompts = [_data.sample_prompts([ex], 1, tokenizer=chat_tok)[0] for ex in chosen]
    continuations = sample_continuations(
        model, tokenizer, prompts, max_new_tokens=max_new_tokens, seed=seed
    )
    # A post's continuation brings its own leading space (or continues the prompt's last word).
    posts = [
        ((p + c).strip() if ex.fmt == "text" else c.strip())
        for p, c, ex in zip(prompts, continuations, chosen, strict=True)
    ]
    references = [ex.text for ex in chosen]
    return score_samples(
        prompts=prompts,
        posts=posts,
        references=references,
        train_texts=[ex.text for ex in train],
        tokenizer=tokenizer,
        threshold=threshold,
        n_worst=n_worst,
        val_loss=val_loss,
        val_tokens=val_tokens,
    )


def score_samples(
    *,
    prompts: Sequence[str],
    posts: Sequence[str],
    references: Sequence[str],
    train_texts: Sequence[str],
    tokenizer: Tokenizer,
    threshold: int = 10,
    n_worst: int = 3,
    val_loss: float | None = None,
    val_tokens: int = 0,
) -> EvalReport:
    """Text metrics and memorisation of `posts` (prompted from `references`)."""
    automaton = SuffixAutomaton([tokenizer.encode(t) for t in train_texts])
    results = []
    for prompt, post, ref in zip(prompts, posts, references, strict=True):
        run, idx = automaton.longest_match(tokenizer.encode(post))
        closest = None if idx is None else train_texts[idx]
        results.append(
            SampleResult(prompt=prompt, text=post, reference=ref, longest_run=run, closest=closest)
        )
    runs = [r.longest_run for r in results]
    n = max(1, len(results))
    return EvalReport(
        val_loss=val_loss,
        perplexity=None if val_loss is None else math.exp(min(val_loss, 50.0)),
        val_tokens=val_tokens,
        samples=results,
        distinct_1=distinct_n(posts, 1),
        distinct_2=distinct_n(posts, 2),
        mean_tokens=sum(len(tokenizer.encode(p)) for p in posts) / n,
        mean_words=sum(len(p.split()) for p in posts) / n,
        bleu=corpus_bleu(posts, references),
        rouge_l=sum(rouge_l(p, r) for p, r in zip(posts, references, strict=True)) / n,
        threshold=threshold,
        memorised_share=sum(r >= threshold for r in runs) / n,
        mean_longest_run=sum(runs) / n,
        worst=sorted(results, key=lambda r: -r.longest_run)[:n_worst],
    )
