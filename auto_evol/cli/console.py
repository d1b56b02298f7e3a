"""What a person sees while a run goes: rich progress bars per phase, a table per step or round.

The consoles are observers of the run (observer.py), like the MLflow loggers beside them."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from ..core.observer import Observer
from ..llm.cost import summary as cost_summary
from ..llm.cost import usd_text
from ..optimize import PAPER_CALLS, OptimizeResult, StepRecord


def _pct(rate: float) -> str:
    return f"{rate:.1%}"


class PhaseProgress(Observer):
    """One transient progress bar for the phase under way (a resumed phase starts at what it had
    done); stopped at ``close`` whatever ended the run, so the terminal gets its cursor back."""

    width = 16   # the description column

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn(f"{{task.description:<{self.width}}}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.fields[live]}"), console=self.console, transient=True)
        self.current: tuple[str, int] | None = None
        self.live = None   # a callable for a live figure at the bar's end (evolve: "concurrency N"), per advance

    def describe(self, name: str) -> str:
        """The bar's label for phase ``name``."""
        return name

    def phase(self, name: str, total: int, done: int = 0) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current[1])
        self.current = (name, self.progress.add_task(self.describe(name), total=total, completed=done,
                                                     live=self.live() if self.live else ""))

    def advance(self, name: str) -> None:
        if self.current is not None and self.current[0] == name:
            if self.live is None:
                self.progress.advance(self.current[1])
            else:
                self.progress.update(self.current[1], advance=1, live=self.live())

    def close(self, error: BaseException | None) -> None:
        self.progress.stop()


class OptimizeConsole(PhaseProgress):
    """Progress and the per-step tables of `auto-evol optimize`. Its phases overlap (e0 on the dev set
    beside step 1, a candidate's dev evaluation beside another's optimization): each bar is named for
    its step ("step 2: dev evaluation"), the latest begun is shown, and at its end the calls in flight
    and their limit."""

    width = 28

    def start(self, options, *, split, init, calls=None, **_) -> None:
        if calls is not None:
            self.live = calls
        evol, opt = options.evol_settings(), options.optimizer_settings()
        self.console.print(
            f"[bold]auto-evol optimize[/] {split.name}: {len(split.train)} training, {len(split.dev)} dev | "
            f"start {init.name} | steps {options.steps}, m {options.candidates}, batch {options.batch_size}, "
            f"rounds {options.rounds} | evol {evol.label} (t={evol.temperature}), "
            f"optimizer {opt.label} (t={opt.temperature})")
        for note in getattr(split, "notes", ()):
            self.console.print(note)
        if options.resume:
            self.console.print(f"resuming MLflow run {options.resume} after its last finished step")
        self.progress.start()

    def baseline(self, evaluation) -> None:
        counts = ", ".join(f"{k} {v}" for k, v in evaluation.counts().most_common()) or "none"
        self.console.print(f"{evaluation.method.name} on the dev set: failure rate {_pct(evaluation.rate)} "
                           f"({counts})")

    def step(self, record: StepRecord) -> None:
        self.console.print(step_table(record))

    def finish(self, result: OptimizeResult) -> None:
        self.progress.stop()
        rates = " -> ".join(_pct(r) for r in result.rates)
        if result.stopped is not None:
            spent = "" if result.process_cost is None else f" ({usd_text(result.process_cost)} spent by this process)"
            where = f" --resume {result.run_id}" if result.run_id else " --resume RUN_ID"
            self.console.print(f"[bold]stopped at {result.stopped}[/] after step {len(result.rates) - 1}{spent}; "
                               f"failure rate {rates}; e* is not made yet: go on with{where}")
        else:
            self.console.print(f"[bold]e*[/] = {result.best.name} (from {result.best.parent}) written to "
                               f"{result.method_path}; failure rate {rates}")
        calls = {role: u["calls"] for role, u in result.usage.items()}
        tokens = sum(u["output_tokens"] for u in result.usage.values())
        self.console.print(f"{sum(calls.values())} LLM calls ({calls['evol']} evol, {calls['optimizer']} "
                           f"optimizer; {sum(u['cached'] for u in result.usage.values())} from the cache; "
                           f"{result.paper_share:.0%} of the paper's ~{PAPER_CALLS:,} for an optimization), "
                           f"{tokens} tokens written, in {result.seconds:.0f} s"
                           + (f"; MLflow run {result.run_id}" if result.run_id else ""))
        if result.costs:
            self.console.print(f"cost of the run (all its processes): {cost_summary(result.costs)}")


def step_table(record: StepRecord) -> Table:
    table = Table(title=f"step {record.step}: incumbent {record.incumbent.name} "
                        f"at {_pct(record.incumbent_rate)}", title_justify="left")
    for column in ("candidate", "failure rate", "failures by type", "method", "result"):
        table.add_column(column)
    full = max((len(c.evaluation.results) for c in record.candidates if c.evaluation), default=0)
    for c, rate in zip(record.candidates, record.rates):
        if c.evaluation is None:
            counts = "(the incumbent's text: not judged again)"
        else:
            counts = ", ".join(f"{k} {v}" for k, v in c.evaluation.counts().most_common()) or "-"
            if len(c.evaluation.results) < full:
                counts += f" (dropped after {len(c.evaluation.results)} of {full} items)"
        result = "accepted" if record.accepted == c.index else ("" if c.readable else "unreadable, kept incumbent")
        table.add_row(str(c.index + 1), _pct(rate), counts, c.method.hash, result)
    phases = ", ".join(f"{k} {record.calls.get(k, 0)} calls ({record.cached.get(k, 0)} cached) / {v:.0f}s"
                       for k, v in record.seconds.items())
    if record.costs:
        phases += f"; cost: {cost_summary(record.costs)}"
    table.caption = phases
    table.caption_justify = "left"
    return table


class EvolveConsole(PhaseProgress):
    """Progress and the closing stats table of `auto-evol evolve`."""

    width = 14

    def start(self, options, *, seeds: int, methods, concurrency=None, **_) -> None:
        if concurrency is not None:   # --concurrency auto: the adaptive limit, live
            self.live = lambda: f"concurrency {concurrency()}"
        names = ", ".join(f"{m.name} ({w:.2g})" for m, w in methods)
        self.console.print(f"[bold]auto-evol evolve[/] {options.data}: {seeds} seeds, {options.rounds} rounds, "
                           f"methods {names}; evol {options.evol_settings().label}, "
                           f"answers {options.answer_settings().label}")
        self.progress.start()

    def finish(self, result) -> None:
        self.progress.stop()
        for bad in result.bad_lines[:20]:
            self.console.print(f"skipped {bad.where}: {bad.reason}")
        if len(result.bad_lines) > 20:
            self.console.print(f"... {len(result.bad_lines) - 20} more bad rows (see the work folder's bad_lines.jsonl)")
        table = Table(title="rounds", title_justify="left")
        for column in ("round", "kept", "eliminated by reason", "mean words before -> after"):
            table.add_column(column)
        for r in result.rounds:
            d = r.to_dict()
            reasons = ", ".join(f"{k} {v}" for k, v in r.eliminated.most_common()) or "-"
            lengths = f"{d['mean_words_before']} -> {d['mean_words_after']}" if r.kept else "-"
            table.add_row(str(r.round), str(r.kept), reasons, lengths)
        self.console.print(table)
        calls = ", ".join(f"{role} {u['calls']} calls ({u['cached']} cached, {u['errors']} failed), "
                          f"{u['output_tokens']} tokens out" for role, u in result.calls.items())
        if result.complete:
            self.console.print(f"{result.records} records -> {result.out}; rejects -> {result.rejects}; {calls}; "
                               f"{result.seconds:.0f} s")
        else:
            self.console.print(f"stopped at {result.stopped or '--max-calls'} ({calls}); rerun the same command "
                               f"to go on")
        if result.costs:
            self.console.print(f"cost (this process): {cost_summary(result.costs)}")


class CompareConsole(PhaseProgress):
    """Progress of `auto-evol compare` (its table is printed by the command, from the summary)."""

    def start(self, options, *, split, methods, **_) -> None:
        self.console.print(f"[bold]auto-evol compare[/] {split.name}: {len(split.dev)} dev items, {options.rounds} "
                           f"rounds, methods {', '.join(methods)}")
        self.progress.start()


def _count(n) -> str:
    n = float(n)
    for bound, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= bound:
            return f"{n / bound:.3g}{suffix}"
    return f"{n:.0f}"


def _usd(value) -> str:
    return usd_text(value) if isinstance(value, (int, float)) else str(value)


def estimate_table(estimate: dict) -> str:
    """evolve --dry-run for a person: per role calls, tokens in and out and USD (with the pilot's 95%
    range when there was one), the total, then what the figures assume. Plain text: it is read once,
    pasted into an issue or a budget request."""
    ranged = "pilot" in estimate
    header = ("role", "model", "calls", "tokens in", "tokens out", "USD")
    rows = []

    def cell(row: dict, key: str, text) -> str:
        if ranged and key in row.get("range", {}) and row["range"][key][0] != row["range"][key][1]:
            lo, hi = row["range"][key]
            fmt = _usd if key == "cost_usd" else _count
            return f"{text} ({fmt(lo)}-{fmt(hi)})"
        return str(text)

    for role, row in estimate["roles"].items():
        rows.append((role, row["model"], cell(row, "calls", _count(row["calls"])),
                     cell(row, "input_tokens", _count(row["input_tokens"])),
                     cell(row, "output_tokens", _count(row["output_tokens"])),
                     cell(row, "cost_usd", _usd(row["cost_usd"])) + ("" if row.get("price") != "batch" else " batch")))
    total = _usd(estimate["cost_usd"])
    if ranged and "cost_usd_range" in estimate:
        lo, hi = estimate["cost_usd_range"]
        total += f" ({_usd(lo)}-{_usd(hi)})"
    rows.append(("total", "", _count(estimate["calls"]), _count(estimate["prompt_tokens_estimate"]),
                 _count(estimate["output_tokens_estimate"]), total))
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w) if i < 2 else str(v).rjust(w) for i, (v, w) in enumerate(zip(r, widths)))
    out = [f"evolve --dry-run: {estimate['items']:,} seeds x {estimate['rounds']} rounds"
           + (f" ({estimate['seeds_without_answer']:,} seeds without an answer get one)"
              if estimate["seeds_without_answer"] else "")
           + (f"; {estimate['bad_rows']:,} bad rows skipped" if estimate["bad_rows"] else "")
           + (f"; {estimate['contaminated_seeds']:,} seeds contaminated, left out" if estimate.get("contaminated_seeds")
              else ""),
           "", line(header), line(["-" * w for w in widths]), *(line(r) for r in rows[:-1]),
           line(["-" * w for w in widths]), line(rows[-1]), ""]
    if ranged:
        p = estimate["pilot"]
        per_call = "; ".join(f"{role} {v['input_tokens']:.0f} in / {v['output_tokens']:.0f} out"
                             for role, v in p["per_call"].items())
        paid = (_usd(p["spent_usd"]) if isinstance(p["spent_usd"], (int, float)) else "at no known price")
        out.append(f"measured on the first {p['items']} items (the pilot: {p['used']['evol']['calls'] + p['used']['answer']['calls']:,} "
                   f"calls, {paid} in this process; their results are kept in the work folder, so the real run "
                   f"pays for them no more)")
        out.append(f"tokens per call: {per_call}")
        for r, e in p["elimination"].items():
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(e["reasons"].items(), key=lambda kv: -kv[1]))
            out.append(f"round {r}: {e['eliminated']} of {e['items']} eliminated ({e['rate']:.0%})"
                       + (f": {reasons}" if reasons else ""))
        out.append("(ranges: 95%)")
    out.append(f"assumes: {estimate['assumes']}")
    return "\n".join(out)
