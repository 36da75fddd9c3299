"""`plaudit models` and `plaudit generate`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO, Annotated

import typer

from plaudit.daemon._cli_core import fail


def register(app: typer.Typer) -> None:
    @app.command(short_help="List the model size presets and the pretrained model.")
    def models(
        as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    ) -> None:
        """List the model size presets (with parameter counts) and the pretrained model.

        The presets are for training from scratch; `smollm2` is the model plaudit loads by name."""
        # Counted from the shapes: building even a meta-device model imports sympy (2 s).
        from plaudit.learner import PRESETS

        rows = [
            {"name": name, "params": cfg.num_params(), **cfg.to_dict()}
            for name, cfg in PRESETS.items()
        ]
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row))
            typer.echo(json.dumps({"name": "smollm2", "pretrained": "SmolLM2-135M-Instruct"}))
            return
        typer.echo("Presets for training from scratch (llama family; counts at vocab 8192,")
        typer.echo("which training replaces with the trained tokenizer's):")
        typer.echo(
            f"  {'name':<8}{'params':>10}{'layers':>8}{'heads':>7}{'kv':>5}{'width':>7}{'mlp':>7}"
        )
        for r in rows:
            typer.echo(
                f"  {r['name']:<8}{r['params'] / 1e6:>9.1f}M{r['n_layer']:>8}{r['n_head']:>7}"
                f"{r['n_kv_head']:>5}{r['n_embd']:>7}{r['intermediate_size']:>7}"
            )
        typer.echo("Pretrained: smollm2 = SmolLM2-135M-Instruct (the default --model of generate).")

    @app.command(short_help="Sample text from a model: PROMPT, --prompt or stdin.")
    def generate(
        prompt: Annotated[
            str | None,
            typer.Argument(
                metavar="PROMPT",
                show_default=False,
                help="Prompt text; '-' or none (with stdin not a terminal) reads it from stdin.",
            ),
        ] = None,
        more: Annotated[
            list[str] | None,
            typer.Option(
                "--prompt",
                metavar="TEXT",
                help="Prompt text, also after PROMPT; repeat the option for several prompts.",
            ),
        ] = None,
        model: Annotated[
            str,
            typer.Option(
                "--model",
                metavar="MODEL",
                help="'smollm2', a .gguf file, a Hugging Face folder or a plaudit model folder.",
            ),
        ] = "smollm2",
        n: Annotated[int, typer.Option("--n", min=1, help="Samples per prompt.")] = 1,
        max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1)] = 64,
        temperature: Annotated[
            float, typer.Option("--temperature", min=0.0, help="0 = greedy.")
        ] = 1.0,
        top_p: Annotated[
            float | None, typer.Option("--top-p", help="Nucleus mass in (0, 1].")
        ] = None,
        top_k: Annotated[int | None, typer.Option("--top-k", min=1)] = None,
        seed: Annotated[
            int | None,
            typer.Option("--seed", min=0, max=2**63 - 1, help="Seed for reproducible samples."),
        ] = None,
        chat: Annotated[
            bool,
            typer.Option("--chat", help="Send each prompt as a user message (chat template)."),
        ] = False,
        as_json: Annotated[
            bool,
            typer.Option("--json", help="JSON lines: text, tokens, logprobs per sample."),
        ] = False,
        bf16: Annotated[
            bool,
            typer.Option(
                "--bf16", help="Compute in bfloat16 (faster from batch 8 up on AMX CPUs)."
            ),
        ] = False,
        cache_dir: Annotated[
            Path | None,
            typer.Option(
                "--cache-dir",
                help="Where converted GGUF weights are cached (default: the user cache folder).",
            ),
        ] = None,
    ) -> None:
        """Sample continuations of prompts (token ids and logprobs under --json).

        The prompt is the PROMPT argument, --prompt (repeat it for several), or stdin:
        `echo "Once upon a time" | plaudit generate`."""
        prompts = _prompts(prompt, more or [])
        note = _Note(enabled=_interactive(sys.stderr))
        # Importing torch and reading the weights take seconds (about 20 for smollm2 on CPU).
        note.show(f"loading {model} ...")
        try:
            import torch

            from plaudit.learner import (
                LearnerError,
                SamplingConfig,
                configure_torch,
                default_cache_dir,
                generate_text,
                load_model,
            )

            configure_torch()
            try:
                sampling = SamplingConfig(
                    temperature=temperature,
                    top_k=top_k,
                    top_p=top_p,
                    max_new_tokens=max_new_tokens,
                    seed=seed,
                )
                loaded = load_model(model, cache_dir=cache_dir or default_cache_dir())
                note.show(f"sampling from {model} ...")
                samples = generate_text(
                    model=loaded.model,
                    tokenizer=loaded.tokenizer,
                    prompts=None if chat else prompts,
                    messages=[[{"role": "user", "content": p}] for p in prompts] if chat else None,
                    n=n,
                    sampling=sampling,
                    dtype=torch.bfloat16 if bf16 else None,
                )
            except (LearnerError, ValueError) as e:
                note.clear()
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(code=1) from e
        finally:
            note.clear()
        for i, s in enumerate(samples):
            if as_json:
                record = {
                    "prompt_index": s.prompt_index,
                    "sample": i % n,
                    "text": s.text,
                    "tokens": s.tokens,
                    "logprobs": [round(lp, 6) for lp in s.logprobs],
                    "finished": s.finished,
                }
                typer.echo(json.dumps(record, ensure_ascii=False))
            else:
                end = "stop token" if s.finished else "length limit"
                typer.echo(
                    f"--- prompt {s.prompt_index}, sample {i % n} ({len(s.tokens)} tokens, {end})"
                )
                typer.echo(s.text)


def _interactive(stream: IO[str]) -> bool:
    return stream.isatty()


def _prompts(prompt: str | None, more: list[str]) -> list[str]:
    """The prompts in order: PROMPT, then each --prompt; '-' (or no prompt at all, with stdin
    not a terminal) is stdin's text, read once."""
    given = ([] if prompt is None else [prompt]) + more
    if not given:
        if _interactive(sys.stdin):
            raise fail(
                'no prompt: give one as an argument (plaudit generate "Once upon a time"), '
                "with --prompt, or on stdin"
            )
        given = ["-"]
    if given.count("-") > 1:
        raise fail("stdin ('-') can be only one of the prompts")
    if "-" in given:
        text = sys.stdin.read().rstrip("\r\n")
        if not text.strip():
            raise fail("the prompt read from stdin is empty: pipe some text into plaudit generate")
        given = [text if p == "-" else p for p in given]
    return given


class _Note:
    """A one-line progress note on a terminal's stderr, rewritten in place and erased before
    the samples print. Off when stderr is not a terminal: logs and pipes get no control codes."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.shown = False

    def show(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"\r\x1b[K{text}")
            sys.stderr.flush()
            self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.shown = False
