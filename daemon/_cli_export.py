"""`plaudit export`: write a model as a Hugging Face folder that `transformers` loads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def export(
        model: Annotated[
            str,
            typer.Option(
                "--model",
                help="'smollm2', a .gguf file, a Hugging Face folder or a plaudit model folder.",
            ),
        ],
        out: Annotated[Path, typer.Option("--out", help="Folder to write (must be empty or new).")],
        force: Annotated[
            bool, typer.Option("--force", help="Replace a non-empty --out folder.")
        ] = False,
        cache_dir: Annotated[
            Path | None,
            typer.Option(
                "--cache-dir",
                help="Where converted GGUF weights are cached (default: the user cache folder).",
            ),
        ] = None,
    ) -> None:
        """Export a model to a Hugging Face folder that transformers loads.

        Writes config.json, model.safetensors, tokenizer.json and generation_config.json."""
        # Refuse before spending seconds on loading the model.
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
            typer.echo(
                f"error: {out} exists and is not an empty folder; choose another --out or pass "
                f"--force to replace it.",
                err=True,
            )
            raise typer.Exit(code=1)
        from plaudit.learner import LearnerError, default_cache_dir, export_hf, load_model

        try:
            loaded = load_model(model, cache_dir=cache_dir or default_cache_dir())
            export_hf(out, model=loaded.model, tokenizer=loaded.tokenizer, overwrite=force)
        except LearnerError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(code=1) from e
        config = loaded.model.config
        typer.echo(
            f"exported {loaded.source} ({config.family}, {loaded.model.num_params():,} "
            f"parameters) to {out}"
        )
