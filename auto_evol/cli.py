"""The ``auto-evol`` command: parses flags and calls the verbs; nothing else lives here."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from .errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evolve instruction data, and optimize the evolving method itself (Auto Evol-Instruct).")


@app.callback()
def main() -> None:
    """auto-evol: Auto Evol-Instruct for fine-tuning data."""


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"auto-evol: error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def optimize(
    data: Optional[str] = typer.Option(None, help="Registered data set (dev_sets/) or a JSONL/JSON/CSV/Parquet file. [default: gsm8k_seed]"),
    config: Optional[Path] = typer.Option(None, help="TOML preset; flags override it."),
    instruction_field: Optional[str] = typer.Option(None, help="Column holding the instruction (guessed when omitted)."),
    init_method: Optional[str] = typer.Option(None, help="Method to start from: a name in methods/ or a file. [default: e0]"),
    steps: Optional[int] = typer.Option(None, help="Maximum optimization steps T. [default: 10]"),
    candidates: Optional[int] = typer.Option(None, "--candidates", "-m", help="Candidate methods per step m. [default: 5]"),
    batch_size: Optional[int] = typer.Option(None, help="Mini-batch size. [default: 10]"),
    dev_size: Optional[int] = typer.Option(None, help="Held-out dev set size. [default: 50]"),
    rounds: Optional[int] = typer.Option(None, help="Evolution rounds per trajectory l. [default: 1]"),
    patience: Optional[int] = typer.Option(None, help="Stop after this many steps without a better method. [default: 1]"),
    seed: Optional[int] = typer.Option(None, help="Seed for the dev split and mini-batches. [default: 0]"),
    evol_model: Optional[str] = typer.Option(None, help="Evol LLM: provider/model, gguf:PATH, or embedded. [default: embedded]"),
    optimizer_model: Optional[str] = typer.Option(None, help="Optimizer LLM, same forms. [default: embedded]"),
    api_base: Optional[str] = typer.Option(None, help="OpenAI-compatible server for provider models."),
    evol_temperature: Optional[float] = typer.Option(None, help="[default: 0]"),
    evol_top_p: Optional[float] = typer.Option(None, help="[default: provider's]"),
    evol_max_tokens: Optional[int] = typer.Option(None, help="[default: 1024]"),
    optimizer_temperature: Optional[float] = typer.Option(None, help="[default: 0.6]"),
    optimizer_top_p: Optional[float] = typer.Option(None, help="[default: 0.95]"),
    optimizer_max_tokens: Optional[int] = typer.Option(None, help="[default: 2048]"),
    concurrency: Optional[int] = typer.Option(None, help="LLM calls in flight at once. [default: 4]"),
    name: Optional[str] = typer.Option(None, help="Name of e* in methods/. [default: DATA-DATE]"),
    methods_dir: Optional[str] = typer.Option(None, help="Where e* is written. [default: methods]"),
    cache_dir: Optional[str] = typer.Option(None, help="LLM response cache. [default: ~/.cache/auto-evol]"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Keep LLM replies in memory only."),
    no_track: bool = typer.Option(False, "--no-track", help="Record nothing in MLflow."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables; print e*'s path only."),
) -> None:
    """Optimize an evolving method on a data set, from e0 (or --init-method) to e*."""
    from .config import load_preset
    from .optimize import Options
    from .optimize import optimize as run

    given = {k: v for k, v in locals().items()
             if k not in ("config", "no_cache", "no_track", "quiet", "load_preset", "Options", "run") and v is not None}
    settings = load_preset(config, Options) if config else {}
    settings.update(given)
    if no_cache:
        settings["cache_dir"] = None
    if no_track:
        settings["track"] = False
    reporter = None
    if not quiet:
        from .console import RichReporter

        reporter = RichReporter()
    result = run(Options(**settings), reporter=reporter)
    if quiet:
        typer.echo(str(result.method_path))


def run() -> None:
    """Console entry point: one clear line and a non-zero exit for anything the user must fix."""
    try:
        app(standalone_mode=False)
    except UserError as exc:
        typer.echo(f"auto-evol: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("auto-evol: interrupted", err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        typer.echo("auto-evol: aborted", err=True)
        sys.exit(130)
    except Exception as exc:  # click's usage errors, and bugs: one line unless debugging
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("AUTO_EVOL_DEBUG"):
            raise
        typer.echo(f"auto-evol: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
                   f"(set AUTO_EVOL_DEBUG=1 for the traceback)", err=True)
        sys.exit(1)
