"""`plaudit train offline`, `plaudit eval`, `plaudit grow`: offline training from the command
line. Knobs come from flags, then the `[offline]` table of the config file, then defaults."""

from __future__ import annotations

import json
import re
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from plaudit.daemon._cli_core import ConfigOption, StateDirOption, fail


def _config_table(config: Path | None) -> dict[str, Any]:
    """The `[offline]` table of the config file (--config, else ./plaudit.toml when present):
    the same knobs the daemon's offline fits use."""
    from plaudit.learner import OfflineTrainConfig

    path = config if config is not None else Path("plaudit.toml")
    if not path.is_file():
        if config is not None:
            raise fail(f"config file {config} does not exist")
        return {}
    table = _toml_or_exit(path).get("offline", {})
    if not isinstance(table, dict):
        raise fail(f"config file {path}: `offline` must be a table ([offline])")
    return {k: v for k, v in table.items() if k in OfflineTrainConfig.model_fields}


def _toml_or_exit(path: Path) -> dict[str, Any]:
    from plaudit.daemon._config import ConfigError, read_toml

    try:
        return read_toml(path)
    except ConfigError as e:
        raise fail(str(e)) from None


def _build_config(config: Path | None, flags: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from plaudit.learner import OfflineTrainConfig

    merged = _config_table(config) | {k: v for k, v in flags.items() if v is not None}
    try:
        return OfflineTrainConfig(**merged)
    except ValidationError as e:
        problems = "; ".join(
            f"--{'-'.join(str(p) for p in err['loc']).replace('_', '-')}: {err['msg']}"
            for err in e.errors()
        )
        raise fail(f"bad training settings: {problems}") from None


def _default_out(state_dir: Path | None, config: Path | None, model: str) -> Path:
    from plaudit.daemon._cli_core import state_folder_or_exit

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(model).name or model).strip("-") or "model"
    return state_folder_or_exit(config, state_dir) / "runs" / name


def _face_examples(name: str, config: Path | None, state_dir: Path | None) -> list[Any]:
    """The history of face `name` as plain-text examples: the `[faces.NAME]` instance of the
    config file when there is one, else a face of type NAME with its default settings."""
    import asyncio

    from plaudit.daemon._cli_core import state_folder_or_exit
    from plaudit.faces import FaceError, discover, face_specs
    from plaudit.learner import examples_from_texts

    path = config if config is not None else Path("plaudit.toml")
    table: dict[str, Any] = {}
    if path.is_file():
        table = _toml_or_exit(path).get("faces", {})
    spec = face_specs(table).get(name)
    face_type, options = (spec.type, dict(spec.options)) if spec else (name, {})
    folder = state_folder_or_exit(config, state_dir) / "faces" / name

    async def history() -> list[str]:
        face = discover(only=[face_type]).create(
            name=name, type=face_type, config=options, state_dir=folder
        )
        async with face:
            return [post.text async for post in face.history()]

    try:
        folder.mkdir(parents=True, exist_ok=True)
        texts = asyncio.run(history())
    except FaceError as e:
        raise fail(f"cannot read the history of face {name!r}: {e}", 1) from None
    if not texts:
        raise fail(
            f"face {name!r} has no history to train on (0 posts); give it history (a file "
            "face: its `history` files) or train on files with --data FILE",
            1,
        )
    return list(examples_from_texts(texts, source=f"face {name}"))


def offline(
    model: Annotated[
        str | None,
        typer.Option(
            help="Preset (nano ... xxl) to train from scratch, or a model to fine-tune: "
            "'smollm2', a .gguf, a Hugging Face folder, a plaudit model or run folder."
        ),
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Training data file (repeat for several).", dir_okay=False),
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            metavar="FORMAT",
            help="How the --data files are laid out: text (examples are blocks separated by "
            "blank lines; a file without blank lines has one per line), qa (Q: / A: turns), "
            'dialogue (User: / Assistant: turns), jsonl (one {"text": ...} or {"prompt": ..., '
            '"response": ...} object per line), or auto: detected per file (the default).',
        ),
    ] = None,
    chat_template: Annotated[
        str | None,
        typer.Option(help="auto|on|off: conversations in the tokenizer's chat template."),
    ] = None,
    face: Annotated[str | None, typer.Option(help="Also train on this face's history.")] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Run folder (default: STATE/runs/<model>).", file_okay=False),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the newest checkpoint in --out.")] = False,
    force: Annotated[bool, typer.Option(help="Replace an existing run in --out.")] = False,
    tokenizer: Annotated[
        Path | None, typer.Option(help="From scratch: reuse this tokenizer folder.")
    ] = None,
    build_tokenizer: Annotated[
        bool | None, typer.Option("--build-tokenizer", help="From scratch: train a BPE first.")
    ] = None,
    vocab_size: Annotated[int | None, typer.Option(help="BPE vocabulary size.")] = None,
    val_split: Annotated[float | None, typer.Option(help="Validation share (0.05).")] = None,
    epochs: Annotated[int | None, typer.Option(help="Passes over the data (3).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Stop after this many steps.")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Peak learning rate (1e-3 scratch, 5e-5 fine-tune).")
    ] = None,
    warmup_steps: Annotated[int | None, typer.Option(help="Warmup (5% of steps).")] = None,
    lr_schedule: Annotated[str | None, typer.Option(help="cosine|linear|constant.")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay (0.1).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Rows per micro-batch (16).")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Micro-batches per step (1).")] = None,
    max_seq_len: Annotated[int | None, typer.Option(help="Tokens per row (256).")] = None,
    packing: Annotated[
        str | None,
        typer.Option(
            help="examples (whole examples per row) | stream (cut at fixed intervals) | auto "
            "(examples when the data has prompts)."
        ),
    ] = None,
    grad_clip: Annotated[float | None, typer.Option(help="Gradient norm clip, 0 = off.")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32|bf16|fp16 (fp32).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (1337).")] = None,
    device: Annotated[str | None, typer.Option(help="auto|cpu|cuda.")] = None,
    compile: Annotated[bool | None, typer.Option("--compile", help="torch.compile.")] = None,
    fsdp: Annotated[
        bool | None,
        typer.Option(
            "--fsdp", help="Shard weights, grads and optimizer over the torchrun processes (FSDP2)."
        ),
    ] = None,
    eval_every: Annotated[int | None, typer.Option(help="Evaluate every N steps (100).")] = None,
    save_every: Annotated[int | None, typer.Option(help="Checkpoint every N steps (500).")] = None,
    keep: Annotated[int | None, typer.Option(help="Checkpoints to keep (3).")] = None,
    patience: Annotated[
        int | None, typer.Option(help="Stop after N evaluations without improvement.")
    ] = None,
    samples: Annotated[int | None, typer.Option(help="Samples shown per evaluation (3).")] = None,
    log_every: Annotated[int | None, typer.Option(help="Log line every N steps (10).")] = None,
    tensorboard: Annotated[
        Path | None, typer.Option(help="Write TensorBoard scalars to this folder.")
    ] = None,
    config: ConfigOption = None,
    state_dir: StateDirOption = None,
) -> None:
    """Train a model from scratch (--model SIZE) or fine-tune one on text files or a face."""
    from plaudit.daemon._logging import configure_logging, get_logger
    from plaudit.learner import LearnerError, configure_torch, train_offline

    configure_torch()
    flags = {
        "model": model,
        "data": data,
        "format": fmt,
        "chat_template": chat_template,
        "face": face,
        "tokenizer": tokenizer,
        "build_tokenizer": build_tokenizer,
        "vocab_size": vocab_size,
        "val_split": val_split,
        "epochs": epochs,
        "max_steps": max_steps,
        "lr": lr,
        "warmup_steps": warmup_steps,
        "lr_schedule": lr_schedule,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "max_seq_len": max_seq_len,
        "packing": packing,
        "grad_clip": grad_clip,
        "precision": precision,
        "seed": seed,
        "device": device,
        "compile": compile,
        "fsdp": fsdp,
        "eval_every": eval_every,
        "save_every": save_every,
        "keep": keep,
        "patience": patience,
        "samples": samples,
        "log_every": log_every,
        "tensorboard": tensorboard,
    }
    cfg = _build_config(config, flags)
    run_dir = out or _default_out(state_dir, config, cfg.model)
    configure_logging()
    logger = get_logger("plaudit.train")
    extra = _face_examples(cfg.face, config, state_dir) if cfg.face else None

    # SIGTERM / SIGINT: finish the step, checkpoint, exit; a second one stops at once.
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.warning("stopping after this step", signal=signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    # The run makes --out when it does not exist (or replaces it with --force); a failure
    # before its first checkpoint removes it again rather than leave an empty run behind.
    made_here = not run_dir.exists() or (force and not resume)
    try:
        result = train_offline(
            cfg,
            out=run_dir,
            resume=resume,
            force=force,
            extra_examples=extra,
            stop=stop,
            log=lambda event, **kw: logger.info(event, **kw),
        )
    except BaseException as e:
        if made_here:
            _remove_unfinished_run(run_dir)
        if isinstance(e, LearnerError):
            raise fail(str(e), 1) from None
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary = {
        "run": str(result.run_dir),
        "steps": result.steps,
        "reason": result.reason,
        "last_loss": round(result.last_loss, 4),
        "best_val_loss": None if result.best_val_loss is None else round(result.best_val_loss, 4),
        "best": None if result.best_dir is None else str(result.best_dir),
        "checkpoint": None if result.last_checkpoint is None else str(result.last_checkpoint),
    }
    logger.info("training ended", **summary)
    if result.reason == "interrupted":
        typer.echo(f"interrupted at step {result.steps}; continue with --resume --out {run_dir}")


def _remove_unfinished_run(run_dir: Path) -> None:
    """Remove a run folder this run made if it holds no checkpoint (nothing to --resume)."""
    import shutil

    from plaudit.learner import resolve_model_dir

    if not run_dir.is_dir():
        return
    try:
        resumable = resolve_model_dir(str(run_dir)) is not None
    except Exception:  # a folder the learner cannot read holds nothing to resume either
        resumable = False
    if not resumable:
        shutil.rmtree(run_dir, ignore_errors=True)


def evaluate(
    model: Annotated[
        str,
        typer.Option(
            help="Model to evaluate: a run folder (its best), a plaudit model folder, "
            "'smollm2', a .gguf or a Hugging Face folder."
        ),
    ],
    data: Annotated[
        list[Path],
        typer.Option(
            "--data", help="The data it was trained on (repeat for several).", dir_okay=False
        ),
    ],
    fmt: Annotated[
        str | None, typer.Option("--format", help="auto|text|qa|dialogue|jsonl.")
    ] = None,
    val_split: Annotated[float | None, typer.Option(help="Held-out share.")] = None,
    samples: Annotated[int, typer.Option(help="Samples to generate.")] = 32,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens per sample.")] = 48,
    threshold: Annotated[
        int, typer.Option(help="Memorised: shares a run of this many tokens with a training post.")
    ] = 10,
    max_seq_len: Annotated[int | None, typer.Option(help="Tokens per validation row.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed.")] = 1337,
    chat_template: Annotated[
        str | None, typer.Option(help="auto|on|off: conversations in the chat template.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Evaluate a model: loss, diversity, BLEU/ROUGE-L and memorisation.

    Validation loss and perplexity, sample diversity, BLEU/ROUGE-L against held-out posts,
    and memorisation (how much of each sample is copied from a training post). For a run or
    checkpoint, --format, --val-split, --max-seq-len and --chat-template default to the values
    it was trained with, so "held out" means held out from that training."""
    from plaudit.learner import (
        TRAINER_STATE,
        LearnerError,
        configure_torch,
        dedupe_examples,
        default_cache_dir,
        load_model,
        load_trainer_state,
        read_file,
        resolve_model_dir,
        split_validation,
        use_chat_template,
    )
    from plaudit.learner import evaluate as run_eval

    configure_torch()
    try:
        spec = resolve_model_dir(model) or model
        trained: dict[str, Any] = {}
        if isinstance(spec, Path) and (spec / TRAINER_STATE).is_file():
            trained = load_trainer_state(spec)["config"]
        fmt = fmt or trained.get("format", "auto")
        val_split = val_split if val_split is not None else trained.get("val_split", 0.05)
        max_seq_len = max_seq_len or trained.get("max_seq_len", 256)
        chat_template = chat_template or trained.get("chat_template", "auto")
        examples = []
        for path in data:
            examples += read_file(path, fmt)[0]  # type: ignore[arg-type]
        train, val = split_validation(dedupe_examples(examples), val_split)
        loaded = load_model(str(spec), cache_dir=default_cache_dir())
        report = run_eval(
            model=loaded.model,
            tokenizer=loaded.tokenizer,
            train=train,
            val=val,
            n_samples=samples,
            max_new_tokens=max_new_tokens,
            threshold=threshold,
            seed=seed,
            max_seq_len=min(max_seq_len, loaded.model.config.max_seq_len),
            chat_template=use_chat_template(chat_template, loaded.tokenizer),  # type: ignore[arg-type]
            packing=trained.get("packing", "auto"),  # as the model was trained
        )
    except LearnerError as e:
        raise fail(str(e), 1) from None
    if as_json:
        settings = {"val_split": val_split, "max_seq_len": max_seq_len, "format": fmt}
        typer.echo(json.dumps({"model": str(spec)} | settings | report.to_dict(), indent=2))
        return
    typer.echo(f"model {spec}")
    for line in report.lines():
        typer.echo(line)
    typer.echo("samples:")
    for s in report.samples[:5]:
        typer.echo(f"  {s.text!r}")


def grow(
    source: Annotated[
        str,
        typer.Option("--from", help="Checkpoint, run folder (its best) or model folder to grow."),
    ],
    to: Annotated[str, typer.Option("--to", help="Target size preset (micro ... xxl).")],
    out: Annotated[Path, typer.Option(help="Model folder to write.", file_okay=False)],
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out.")] = False,
) -> None:
    """Grow a trained model into a larger preset that computes (nearly) the same function.

    Continue training it with `plaudit train offline --model OUT`."""
    from plaudit.learner import (
        LearnerError,
        configure_torch,
        grow_model,
        grow_target_config,
        load_model,
        logit_difference,
        resolve_model_dir,
        save_model,
    )

    configure_torch()
    if out.exists() and any(out.iterdir()) and not force:
        raise fail(f"{out} is not empty; choose another --out or pass --force to replace it", 1)
    try:
        spec = resolve_model_dir(source) or source
        loaded = load_model(str(spec))
        grown = grow_model(loaded.model, grow_target_config(loaded.model.config, to))
        diff = logit_difference(loaded.model, grown)
        save_model(out, model=grown, tokenizer=loaded.tokenizer)
    except LearnerError as e:
        raise fail(str(e), 1) from None
    a, b = loaded.model.config, grown.config
    typer.echo(
        f"grew {spec} ({loaded.model.num_params():,} parameters, {a.n_layer} layers x "
        f"{a.n_embd}) into {out} ({grown.num_params():,} parameters, {b.n_layer} layers x "
        f"{b.n_embd}); max |logit difference| on random tokens: {diff:.2e}"
    )


def register(app: typer.Typer) -> None:
    from plaudit.daemon._cli_control import train_app

    short = "Train a model from scratch or fine-tune one."
    train_app.command("offline", short_help=short)(offline)
    short = "Evaluate a model: loss, diversity, BLEU/ROUGE-L, memorisation."
    app.command("eval", short_help=short)(evaluate)
    short = "Grow a model into a larger preset that computes the same."
    app.command("grow", short_help=short)(grow)
