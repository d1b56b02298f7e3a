"""The ``auto-evol`` command: parses flags and calls the verbs; nothing else lives here."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

import typer

from ..algorithm import selection as selection_mod
from ..core.errors import Outage, UserError
from ..storage.output import format_help

OUTAGE_EXIT = 4   # 2: bad input or setup; 3: stopped at --max-calls / --max-cost; 4: stopped by an LLM outage

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Evolve instruction data, and optimize the evolving method itself (Auto Evol-Instruct).")


def _print_version(value: bool) -> None:
    """`auto-evol --version`: this package and what it runs on, on one line for a bug report."""
    if not value:
        return
    import platform
    from importlib import metadata

    def version(*dists: str) -> str:
        for dist in dists:
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return "not installed"

    from .. import __version__

    own = version("auto-evol")
    typer.echo(f"auto-evol {own if own != 'not installed' else __version__} (DSPy {version('dspy', 'dspy-ai')}, "
               f"MLflow {version('mlflow', 'mlflow-skinny')}, LLM engine xllamacpp {version('xllamacpp')}, "
               f"Python {platform.python_version()})")
    raise typer.Exit(0)


@app.callback()
def main(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                      help="Print the versions of auto-evol, DSPy, MLflow and xllamacpp, then exit.")
         ) -> None:
    """auto-evol: Auto Evol-Instruct for fine-tuning data."""


STRUCTURED_HELP = ("auto | on | off: ask for JSON-schema replies in the method's own fields (auto: where the "
                   "backend takes them, free text after a refusal; on: a refusal is an error). [default: auto]")


MAX_ERROR_RATE_HELP = ("Stop (exit 4, finished work kept) when more than this share of a role's last 20 LLM calls "
                       "failed after their retries; 1 never stops. [default: 0.5]")


# Parameters that say how a verb runs or prints, not what it does: never an option of its dataclass.
NOT_OPTIONS = frozenset({"config", "quiet", "dry_run", "pilot", "json_output"})
# Flags that set an option of another name: the option and the value a typed flag gives it.
SWITCHES = {"no_track": ("track", False), "no_cache": ("cache_dir", None)}
RENAMED = {"method": "methods"}   # --method / --methods, repeated: the list of methods


def _typed_flags(ctx: typer.Context, skip: tuple[str, ...] = ()) -> dict:
    """The flags the user typed, as option names and values. Click knows which parameters were left at
    their default; those are left out, so a preset or the dataclass decides them and `--steps 10` typed
    over a preset's `steps = 2` still wins, though 10 is the default."""
    flags = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if name in NOT_OPTIONS or name in skip or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        if name in SWITCHES:
            if value:
                option, value = SWITCHES[name]
                flags[option] = value
            continue
        flags[RENAMED.get(name, name)] = list(value) if isinstance(value, tuple) else value
    return flags


def _options(ctx: typer.Context, options_type, config: Path | None = None, *, from_preset=None,
             skip: tuple[str, ...] = ()):
    """The verb's options dataclass, the same way for every verb: typed flag > --config preset > the
    dataclass's default (see config.build_options). A preset holds optimize's options; ``from_preset``
    names those this verb takes."""
    from .config import build_options, load_preset

    preset = {}
    if config is not None:
        from ..optimize import Options

        preset = load_preset(config, Options)
    return build_options(options_type, _typed_flags(ctx, skip), preset, from_preset=from_preset)


@app.command()
def optimize(
    ctx: typer.Context,
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
    concurrency: Optional[str] = typer.Option(None, help="LLM calls in flight per server and model: auto (the adaptive "
                                                         "limit for openai/MODEL with --api-base, 64 for other "
                                                         "providers, 8 for a GGUF model) or a number. [default: auto]"),
    name: Optional[str] = typer.Option(None, help="Name of e* in methods/. [default: DATA-DATE]"),
    methods_dir: Optional[str] = typer.Option(None, help="Where e* is written. [default: methods]"),
    cache_dir: Optional[str] = typer.Option(None, help="LLM response cache. [default: ~/.cache/auto-evol]"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Keep LLM replies in memory only."),
    no_track: bool = typer.Option(False, "--no-track", help="Record nothing in MLflow."),
    experiment: Optional[str] = typer.Option(None, help="MLflow experiment. [default: the data set's name]"),
    trace: bool = typer.Option(False, "--trace", help="Record every LLM call as an MLflow trace."),
    resume: Optional[str] = typer.Option(None, help="Go on with an interrupted run (its run id); its own settings apply."),
    selection: Optional[str] = typer.Option(None, help=selection_mod.help_text()),
    accept: Optional[str] = typer.Option(None, help="lower | paired (a paired test on the same dev items must agree). [default: lower]"),
    confidence: Optional[float] = typer.Option(None, help="Confidence of --accept paired. [default: 0.95]"),
    decontaminate: list[str] = typer.Option([], "--decontaminate", metavar="SPEC...",
                                            help="Benchmark sets (files or hf:NAME[:SPLIT]) whose items, and light "
                                                 "rewordings of them, are left out of the training pool and dev set."),
    decontaminate_ngram: Optional[int] = typer.Option(None, help="Words per n-gram for --decontaminate. [default: 13]"),
    max_error_rate: Optional[float] = typer.Option(None, help=MAX_ERROR_RATE_HELP),
    structured: Optional[str] = typer.Option(None, help=STRUCTURED_HELP),
    batch: Optional[str] = typer.Option(None, "--batch", metavar="[all|evol]",
                                        help="Send the dev evaluation's calls (e0's, the candidates', the champion "
                                             "check's) to the evol model's batch API (OpenAI-compatible, Anthropic); "
                                             "trajectories and the optimizer stay online. Journaled per run: "
                                             "--resume attaches to the batches already submitted."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                      help="Spread the dev evaluation (the bulk of the calls) over a Ray cluster: "
                                           "--ray alone joins RAY_ADDRESS or starts a local Ray; --ray HOST:PORT "
                                           "joins that head node. Trajectories and the optimizer stay here."),
    ray_workers: Optional[int] = typer.Option(None, help="Workers judging dev pairs under --ray. [default: 2 per node]"),
    ray_batch_size: Optional[int] = typer.Option(None, help="Dev pairs one worker takes at once under --ray. "
                                                            "[default: 16]"),
    max_cost: Optional[float] = typer.Option(None, help="Start no step that would take this process's spending past "
                                                        "this many USD (LiteLLM's price table); stops after the "
                                                        "finished step (exit 3): go on with --resume RUN_ID."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print an upper bound on the calls, tokens and cost per "
                                                          "phase and role (JSON); call nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables; print e*'s path only."),
) -> None:
    """Optimize an evolving method on a data set, from e0 (or --init-method) to e*."""
    from ..optimize import Options
    from ..optimize import optimize as run

    options = _options(ctx, Options, config)
    if dry_run:
        import json as _json

        from ..optimize import estimate

        typer.echo(_json.dumps(estimate(options), indent=2))
        return
    observers = []   # the verb puts its MLflow logger in front (inert under --no-track)
    if not quiet:
        from .console import OptimizeConsole

        observers.append(OptimizeConsole())
    result = run(options, observers=observers)
    stopped = getattr(result, "stopped", None)   # --max-cost: the finished steps are kept, --resume goes on
    if quiet:
        typer.echo(str(result.method_path) if stopped is None else "incomplete")
    if stopped is not None:
        raise typer.Exit(3)


@app.command()
def evolve(
    ctx: typer.Context,
    data: str = typer.Option(..., help="Seeds: a JSONL/JSON/CSV/Parquet file, or a Hugging Face dataset as "
                                       "hf:NAME[:SPLIT] or hf:NAME:CONFIG:SPLIT (needs auto-evol[hf]; streamed)."),
    method: list[str] = typer.Option(["evol-instruct"], "--method",
                                     help="Method(s): evol-instruct (the six classic operators), a name in methods/, a file, "
                                          "or prompts:/...; NAME=WEIGHT to weigh several. Repeatable."),
    rounds: int = typer.Option(4, help="Evolution rounds M."),
    out: str = typer.Option("evolved.jsonl", help="Output file; its work folder is OUT.work/."),
    format: Optional[str] = typer.Option(None, help=format_help()),
    sample: Optional[int] = typer.Option(None, help="Draw this many records from seeds + all rounds."),
    seed: int = typer.Option(0, help="Seed for method choice, shuffle and sample."),
    instruction_field: Optional[str] = typer.Option(None, help="Instruction column (guessed when omitted)."),
    input_field: str = typer.Option("input", help="Optional input column."),
    output_field: Optional[str] = typer.Option(
        None, help="Answer column of the seeds. [default: the first of output, response, completion, solution, answer]"),
    evol_model: Optional[str] = typer.Option(None, help="Evol LLM (as for optimize). [default: embedded]"),
    answer_model: Optional[str] = typer.Option(None, help="Answer LLM. [default: the evol model]"),
    api_base: Optional[str] = typer.Option(None, help="OpenAI-compatible server for provider models."),
    answer_temperature: float = typer.Option(1.0),
    answer_top_p: float = typer.Option(0.9),
    answer_max_tokens: int = typer.Option(2048),
    evol_max_tokens: int = typer.Option(1024),
    evol_temperature: float = typer.Option(0.0, help="Evolution sampling (the paper's greedy 0)."),
    retry_temperature: float = typer.Option(1.0, help="An item that failed last round is evolved again at this "
                                                      "temperature when --evol-temperature is 0, so the retry is a new draw."),
    structured: str = typer.Option("auto", help=STRUCTURED_HELP),
    batch: Optional[str] = typer.Option(None, "--batch", metavar="[all|evol|answer]",
                                        help="Send calls to the provider's batch API (OpenAI-compatible, Anthropic): "
                                             "--batch for every role, --batch evol (evolutions and verdicts) or "
                                             "--batch answer; batches are journaled in OUT.work/, a rerun attaches."),
    batch_size: Optional[int] = typer.Option(None, help="Requests per batch under --batch. [default: the "
                                                        "provider's limit: OpenAI 50,000, Anthropic 100,000]"),
    judge: bool = typer.Option(True, "--judge/--no-judge", help="The equal / not-equal information-gain judge."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                      help="Run the rounds as Ray Data pipelines on a cluster: --ray alone joins "
                                           "RAY_ADDRESS or starts a local Ray; --ray HOST:PORT joins that head node. "
                                           "--out must be on storage every node mounts at the same path."),
    ray_workers: Optional[int] = typer.Option(None, help="Workers answering LLM calls per phase under --ray. "
                                                         "[default: 2 per node]"),
    ray_batch_size: int = typer.Option(64, help="Items one worker takes at once under --ray (its calls in flight)."),
    vllm_tensor_parallel: int = typer.Option(1, help="GPUs per vLLM engine, for a vllm:MODEL role (runs on Ray)."),
    vllm_replicas: int = typer.Option(1, help="vLLM engines per vllm:MODEL role."),
    concurrency: str = typer.Option("auto", help="LLM calls in flight: auto (grow while calls succeed, back off on "
                                                 "429/503 and honour Retry-After; for openai/MODEL with --api-base, "
                                                 "other backends keep 64) or a number."),
    timeout: float = typer.Option(120.0, help="Seconds one LLM call may take before it is retried."),
    max_calls: Optional[int] = typer.Option(None, help="Stop after about this many calls; rerun to go on."),
    max_cost: Optional[float] = typer.Option(None, help="Stop (exit 3) before this process's calls would cost more "
                                                        "than this many USD (LiteLLM's price table); rerun to go on."),
    max_error_rate: float = typer.Option(0.5, help=MAX_ERROR_RATE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the calls, tokens and cost per role it would take "
                                                          "(a table; --json for JSON); make no call unless --pilot."),
    json_output: bool = typer.Option(False, "--json", help="With --dry-run: print the estimate as JSON."),
    pilot: Optional[int] = typer.Option(None, "--pilot", metavar="N",
                                        help="With --dry-run: run the first N seeds for real (kept in OUT.work/, so the "
                                             "real run does not pay for them again), measure their calls, tokens and "
                                             "eliminations, and extrapolate to all seeds with a 95% range."),
    decontaminate: list[str] = typer.Option([], "--decontaminate", metavar="SPEC...",
                                            help="Benchmark sets to keep out (JSONL/JSON/CSV/Parquet files or "
                                                 "hf:NAME[:SPLIT]; text from question, instruction, prompt or problem): "
                                                 "a seed or evolution sharing their long n-grams is rejected as "
                                                 "'contaminated'."),
    decontaminate_ngram: int = typer.Option(13, help="Words per n-gram for --decontaminate."),
    dedup: str = typer.Option("off", help="off | near: reduce near-duplicate evolutions (of one another, or of "
                                          "another seed) to one, counted per round as near_duplicate."),
    push_to_hub: Optional[str] = typer.Option(None, "--push-to-hub", metavar="OWNER/NAME",
                                              help="With --format hf: upload the dataset folder to this Hub dataset "
                                                   "repo (token from HF_TOKEN; HF_ENDPOINT for another Hub)."),
    restart: bool = typer.Option(False, "--restart", help="Drop OUT.work/ of an earlier run instead of continuing it."),
    on_bad_line: str = typer.Option("skip", help="skip (report file:line and reason) | fail"),
    cache_dir: Optional[str] = typer.Option(None, help="Also keep every LLM reply in DSPy's disk cache here, to reuse "
                                                      "across work folders (another --out, --restart). Off by default: "
                                                      "the work folder already keeps every finished call for a rerun."),
    no_track: bool = typer.Option(False, "--no-track", help="Record nothing in MLflow."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables; print the output's path "
                                                            "only (incomplete when it stopped early)."),
) -> None:
    """Evolve a dataset with e* or the classic Evol-Instruct operators; rerunning continues where it stopped."""
    import json as _json

    from ..evolve import EvolveOptions
    from ..evolve import evolve as run

    options = _options(ctx, EvolveOptions)
    if (json_output or pilot is not None) and not dry_run:
        raise UserError(f"{'--json' if json_output else '--pilot'} is for --dry-run: add --dry-run, or leave it out")
    if dry_run:
        estimate = run(options, dry_run=True, pilot=pilot)
        if json_output:
            typer.echo(_json.dumps(estimate, indent=2))
        else:
            from .console import estimate_table

            typer.echo(estimate_table(estimate))
        return
    observers = []   # the verb puts its MLflow logger in front (inert under --no-track)
    if not quiet:
        from .console import EvolveConsole

        observers.append(EvolveConsole())
    result = run(options, observers=observers)
    if quiet:
        typer.echo(str(result.out) if result.complete else "incomplete")
    if not result.complete:
        raise typer.Exit(3)


# The preset settings compare takes: a preset holds optimize's options, and compare's rounds (per dev item),
# batch size and confidence (of its intervals) mean something else than optimize's.
COMPARE_FROM_PRESET = ("data", "instruction_field", "dev_size", "seed", "evol_model", "api_base", "evol_max_tokens",
                       "concurrency", "cache_dir", "structured")


@app.command()
def compare(
    ctx: typer.Context,
    method: list[str] = typer.Option(..., "--methods", "--method",
                                     help="Methods to compare: `--methods e0 weak evol-instruct methods/x.md` (names, files, "
                                          "prompts:/ URIs; evol-instruct is the six classic operators)."),
    data: Optional[str] = typer.Option(None, help="Registered data set or file. [default: gsm8k_seed]"),
    config: Optional[Path] = typer.Option(None, help="TOML preset (its models, dev-size, seed... apply)."),
    rounds: int = typer.Option(3, help="Evolution rounds per dev item."),
    dev_size: Optional[int] = typer.Option(None, help="Held-out dev items. [default: 50]"),
    seed: Optional[int] = typer.Option(None, help="[default: 0]"),
    baseline: Optional[str] = typer.Option(None, help="Method the others are compared with. [default: the first]"),
    confidence: float = typer.Option(0.95, help="Interval confidence."),
    evol_model: Optional[str] = typer.Option(None, help="Evol LLM. [default: embedded]"),
    judge_model: Optional[str] = typer.Option(None, help="Difficulty judge LLM. [default: the evol model]"),
    api_base: Optional[str] = typer.Option(None),
    evol_max_tokens: Optional[int] = typer.Option(None, help="[default: 1024]"),
    embeddings: str = typer.Option("auto", help="auto | tfidf | sentence"),
    out: Optional[str] = typer.Option(None, help="Report folder. [default: reports/DATA]"),
    concurrency: Optional[str] = typer.Option(None, help="LLM calls in flight per server and model: auto or a number "
                                                         "(as for optimize). [default: auto]"),
    cache_dir: Optional[str] = typer.Option(None),
    no_track: bool = typer.Option(False, "--no-track"),
    structured: Optional[str] = typer.Option(None, help=STRUCTURED_HELP),
    batch: Optional[str] = typer.Option(None, "--batch", metavar="[all|evol|judge]",
                                        help="Send calls to the provider's batch API (OpenAI-compatible, Anthropic): "
                                             "--batch for the rounds and the difficulty judge, --batch evol (the "
                                             "rounds) or --batch judge; journaled in the report folder, a rerun "
                                             "attaches."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; print the report's path only."),
) -> None:
    """Compare methods side by side: failure rate with intervals, difficulty, diversity, length growth."""
    from ..compare import CompareOptions
    from ..compare import compare as run

    options = _options(ctx, CompareOptions, config, from_preset=COMPARE_FROM_PRESET)
    observers = []   # the verb puts its MLflow logger in front (inert under --no-track)
    if not quiet:
        from .console import CompareConsole

        observers.append(CompareConsole())
    summary = run(options, observers=observers)
    report = Path(options.out or Path("reports") / summary.data) / "report.md"
    if quiet:
        typer.echo(str(report))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{summary.data}: {summary.dev_items} dev items, baseline {summary.baseline}")
    for column in ("method", "failure rate [interval]", "vs baseline", "difficulty by round", "length growth"):
        table.add_column(column, overflow="fold")
    for name, s in summary.methods.items():
        fr, d = s.failure_rate, s.difference_to_baseline
        table.add_row(name, f"{fr.estimate:.1%} [{fr.low:.1%}, {fr.high:.1%}]",
                      f"{d.estimate:+.1%} [{d.low:+.1%}, {d.high:+.1%}]",
                      " / ".join("-" if r.difficulty is None else f"{r.difficulty:.1f}" for r in s.per_round),
                      " / ".join(f"{r.length_growth:.2f}x" for r in s.per_round))
    if summary.costs:
        from ..llm.cost import summary as cost_summary

        table.caption = f"cost: {cost_summary(summary.costs)}"
        table.caption_justify = "left"
    console = Console()
    console.print(table)
    console.print(f"report: {report}; embeddings: "
                  f"{summary.embeddings}" + (f"; MLflow run {summary.run_id}" if summary.run_id else ""))


@app.command()
def check(
    ctx: typer.Context,
    evol_model: Optional[str] = typer.Option(None, help="Evol LLM. [default: embedded]"),
    optimizer_model: Optional[str] = typer.Option(None, help="Optimizer LLM. [default: embedded]"),
    answer_model: Optional[str] = typer.Option(None, help="Answer LLM of evolve, when it differs."),
    api_base: Optional[str] = typer.Option(None, help="OpenAI-compatible server for provider models."),
    structured: str = typer.Option("auto", help=STRUCTURED_HELP),
    config: Optional[Path] = typer.Option(None, help="TOML preset: check its models with its sampling settings; "
                                                      "flags override it."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the roles that cannot work (and nothing "
                                                            "when all can); the exit code says the rest."),
) -> None:
    """One tiny call per role: reachable, key accepted, structured output, sampling parameters (the
    paper's defaults per role, adapted to known provider rules)."""
    from ..llm import backends
    from ..llm import client as llm_mod
    from ..llm import providers
    from ..llm.check import probe
    from ..optimize import Options

    base = _options(ctx, Options, config, skip=("answer_model",))   # evolve's answer role is no optimize option
    llm_mod.check_structured(base.structured)
    roles = [("evol", base.evol_settings()), ("optimizer", base.optimizer_settings())]
    if answer_model:
        roles.append(("answer", llm_mod.RoleSettings(answer_model, base.api_base, 1.0, 0.9, 2048,
                                                     structured=base.structured)))
    for settings, flag in [(s, f"--{r}-model") for r, s in roles]:
        backends.check(settings, flag)
    backends.configure_cache(None)
    usable = True
    for role, settings in roles:
        adapted, notices = providers.adapt(settings)
        if not quiet:
            for text in notices:
                typer.echo(f"{role} {settings.label}: {text}")
        verdict = probe(adapted, role)
        if not quiet or not verdict.ok:
            typer.echo(verdict.line())
        usable &= verdict.ok
    if not usable:
        raise typer.Exit(2)


# Options whose value may be left out, and the value that means then (`--batch` alone: every role).
OPTIONAL_VALUES = {"--batch": "all", "--ray": ""}


def _fill_optional_values(argv: list[str]) -> list[str]:
    """`--batch --out x` -> `--batch all --out x` (typer's options always take their value)."""
    out = []
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg in OPTIONAL_VALUES and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append(OPTIONAL_VALUES[arg])
    return out


SPREAD = ("--methods", "--decontaminate")   # options that take several values after one flag


def _spread_methods(argv: list[str]) -> list[str]:
    """`--methods a b c` -> `--methods a --methods b --methods c` (click options take one value); the same
    for --decontaminate."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] in SPREAD:
            flag, values = argv[i], []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                values.append(argv[i + 1])
                i += 1
            out.pop()
            for value in values or [""]:
                out += [flag, value]
        i += 1
    return out


@app.command()
def ui(port: int = typer.Option(5000, help="Port on 127.0.0.1."),
       run: Optional[str] = typer.Option(None, "--run", help="Optimize run whose steps and candidates the first "
                                                              "address shows, the latest when omitted (any other run: its page)."),
       open_browser: bool = typer.Option(False, "--open", help="Also open it in a browser.")) -> None:
    """Serve the MLflow UI over the project's store, on 127.0.0.1 only; first prints the address of the latest
    optimize run's steps and candidates with their failure rates."""
    from ..tracking.ui import serve_ui

    serve_ui(port, open_browser=open_browser, run_id=run)


@app.command()
def runs(limit: int = typer.Option(50, help="At most this many runs, newest first."),
         quiet: bool = typer.Option(False, "--quiet", "-q", help="No table; print the run ids only, one a line "
                                                                 "(for --resume, ui --run, methods export).")) -> None:
    """Past optimize runs: data, models, failure rate e0 -> e*, steps, calls, date, run id."""
    from rich.console import Console
    from rich.table import Table

    from ..tracking.store import optimize_runs

    rows = optimize_runs(limit)
    if quiet:
        for r in rows:
            typer.echo(r["run_id"])
        return
    table = Table(title=f"{len(rows)} optimize runs")
    for column in ("data", "evol / optimizer", "failure rate e0 -> e*", "steps", "calls", "date", "status", "run id"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r["data"], f"{r['evol_model']} / {r['optimizer_model']}", r["rates"], r["steps"], r["calls"],
                      r["date"], r["status"], r["run_id"])
    Console().print(table)


methods_app = typer.Typer(no_args_is_help=True, help="Methods in methods/ and in the MLflow prompt registry.")
app.add_typer(methods_app, name="methods")


@methods_app.command("list")
def methods_list(quiet: bool = typer.Option(False, "--quiet", "-q", help="No table or notes; print each method's "
                                                                          "name or prompts:/ URI only, one a line.")
                 ) -> None:
    """Every method: files in methods/, the shipped ones, and prompt versions in the registry (no store needed)."""
    from rich.console import Console
    from rich.table import Table

    from ..tracking import registry

    files = registry.method_files()
    try:
        prompts, problem = registry.listing(), None
    except UserError as exc:  # the local methods are still worth showing
        prompts, problem = [], exc
    if quiet:   # what --method, --methods and methods show take, for a script to loop over
        for name in [f["name"] for f in files] + [row["uri"] for row in prompts]:
            typer.echo(name)
        if problem is not None:
            raise problem
        return
    classic = sum(f["name"].startswith("evol-instruct-") for f in files)
    table = Table(title="methods", caption=f"evol-instruct (evolve, compare): the {classic} evol-instruct-* methods, "
                                           "one drawn at random per instruction" if classic else None)
    for column in ("method", "where", "parent", "hash / aliases", "failure rate"):
        table.add_column(column, overflow="fold", no_wrap=column in ("method", "hash / aliases"))
    for f in files:
        table.add_row(f["name"], f["where"], f["parent"], f["hash"], "")
    for row in prompts:
        table.add_row(row["uri"], "registry", row["name"], row["aliases"], row["failure_rate"])
    Console().print(table)
    if problem is not None:
        raise problem
    if not prompts:
        typer.echo(registry.empty_note())


@methods_app.command("show")
def methods_show(spec: str = typer.Argument(..., help="Name, file, or prompts:/NAME/VERSION | prompts:/NAME@ALIAS.")) -> None:
    """Print a method as its file would hold it."""
    from ..tracking.registry import resolve

    typer.echo(resolve(spec).to_file_text(), nl=False)


@methods_app.command("diff")
def methods_diff(a: str, b: str) -> None:
    """Unified diff of two methods' texts (names, files or registry URIs)."""
    import difflib

    from ..tracking.registry import resolve

    first, second = resolve(a), resolve(b)
    diff = difflib.unified_diff(first.text.splitlines(keepends=True), second.text.splitlines(keepends=True),
                                fromfile=a, tofile=b)
    typer.echo("".join(diff) or "(the same text)\n", nl=False)


@methods_app.command("export")
def methods_export(source: str = typer.Argument(..., help="An optimize run id (its e*) or a prompts:/ URI."),
                   to: Path = typer.Option(..., "--to", help="File to write, e.g. methods/gsm8k-e-star.md.")) -> None:
    """Write a run's e* or a registry version to a method file."""
    from ..tracking.registry import export

    typer.echo(str(export(source, to)))


def run() -> None:
    """Console entry point: one clear line and a non-zero exit for anything the user must fix."""
    import gc

    try:
        _run()
    finally:
        # The command's work is done and closed (journals, the store, the output files): the objects it
        # leaves are frozen, so the interpreter's last collection skips them. That collection of MLflow's,
        # SQLAlchemy's and DSPy's objects held every tracked run's exit for ~0.9 s (py-spy: gc_collect_main).
        gc.freeze()


def _run() -> None:
    import importlib

    # Newer typer raises the errors of a click of its own (typer._click); older typer, click's.
    clicks = []
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            clicks.append(importlib.import_module(name))
        except ImportError:
            continue
    usage_errors = tuple(m.UsageError for m in clicks)  # also BadParameter, NoSuchOption, MissingParameter...
    click_errors = tuple(m.ClickException for m in clicks)
    # click >= 8.2 raises this UsageError for a bare `auto-evol`: its show() prints the help.
    no_args_help = tuple(c for c in (getattr(m, "NoArgsIsHelpError", None) for m in clicks) if c is not None)
    try:
        code = app(args=_fill_optional_values(_spread_methods(sys.argv[1:])), standalone_mode=False)
        if isinstance(code, int) and code:  # a command's typer.Exit(N), returned in this mode
            sys.exit(code)
    except UserError as exc:
        typer.echo(f"auto-evol: error: {exc}", err=True)
        sys.exit(2)
    except Outage as exc:   # the provider failed most recent calls: stopped, finished work kept
        typer.echo(f"auto-evol: stopped: {exc}", err=True)
        sys.exit(OUTAGE_EXIT)
    except usage_errors as exc:
        if isinstance(exc, no_args_help):
            exc.show()
            sys.exit(exc.exit_code)
        # One line, like every other error: `auto-evol: error: optimize: Invalid value for '--steps': ...`
        path = exc.ctx.command_path if exc.ctx is not None else ""
        names, ctx = [], exc.ctx   # the subcommand's own names (`methods show`), not how the program was run
        while ctx is not None and ctx.parent is not None:
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        command = " ".join(names)
        message = " ".join(exc.format_message().split())
        hint = f" (see '{path} --help')" if path else ""
        typer.echo(f"auto-evol: error: {command + ': ' if command else ''}{message}{hint}", err=True)
        sys.exit(exc.exit_code if isinstance(exc.exit_code, int) and exc.exit_code else 2)
    except (KeyboardInterrupt, typer.Abort):
        typer.echo("auto-evol: interrupted; finished work is kept: rerun the same command (optimize: --resume RUN_ID)",
                   err=True)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:
        if isinstance(exc, click_errors):  # any other error click reports itself
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("AUTO_EVOL_DEBUG"):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        typer.echo(f"auto-evol: internal error: {type(exc).__name__}: {text} (set AUTO_EVOL_DEBUG=1 for the traceback)",
                   err=True)
        sys.exit(1)
