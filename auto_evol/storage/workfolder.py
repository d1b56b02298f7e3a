"""The work folder of ``evolve --out OUT``: ``OUT.work/``, where a run keeps everything it finished.

A rerun of the same command finds an earlier run's work by these names, so they are an on-disk
contract: a folder written by any earlier version is continued, never redone. Every name the run uses
is spelled here and nowhere else:

- ``lock``: held by the one process working in the folder (locks.hold);
- ``manifest.json``: the settings that decide what the run produces; a rerun continues only when they match;
- ``seeds.jsonl``: the input as read, one seed a line; ``seeds.done`` marks it whole;
- ``bad_lines.jsonl``: the input rows skipped, with file:line and reason;
- ``round0.jsonl``: the answers given to seeds that came without one;
- ``roundN.jsonl``: round N's journal, one line per item (kept or rejected with its reason);
- ``roundN.partial.jsonl``: the finished steps (the evolution, the judge's verdict) of round N's
  unfinished items, so a rerun pays for no finished call; dropped once the round is whole;
- ``batches.jsonl``: under ``--batch``, the batches submitted (intent, batch id, done; llm/batch/), so a
  rerun attaches to a batch instead of paying for it twice;
- ``contaminated.jsonl``: under ``--decontaminate``, the seeds left out at ingest as copies of a
  benchmark item (with the item's id); they go to the rejects, never to a round;
- ``pilot.jsonl``: ``--dry-run --pilot N``'s measure of each pilot item's calls and tokens per role and
  phase; the items' results are in the journals above, so the real run does not pay for them again;
- ``stats.json``: the run's stats (EvolveStats), also logged to MLflow;
- ``shuffle/``: output.shuffled's bucket files while the output is assembled.

Beside the folder, not in it: the output itself, its rejects (``OUT-stem.rejects.jsonl``) and, for a
format that allows no provenance per line, ``OUT-stem.provenance.jsonl``.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..core.errors import UserError
from .checkpoint import atomic_write, read
from .output import provenance_path

LOCK = "lock"
MANIFEST = "manifest.json"
SEEDS = "seeds.jsonl"
SEEDS_DONE = "seeds.done"
BAD_LINES = "bad_lines.jsonl"
STATS = "stats.json"
BATCHES = "batches.jsonl"
CONTAMINATED = "contaminated.jsonl"
PILOT = "pilot.jsonl"
SUFFIX = ".work"


class WorkFolder:
    """``OUT.work/`` of one --out: its paths, and the journal operations a rerun relies on."""

    def __init__(self, out: Path | str) -> None:
        self.out = Path(out)
        self.path = Path(str(out) + SUFFIX)
        self.lock = self.path / LOCK
        self.manifest = self.path / MANIFEST
        self.seeds = self.path / SEEDS
        self.seeds_done = self.path / SEEDS_DONE
        self.bad_lines = self.path / BAD_LINES
        self.stats = self.path / STATS
        self.batches = self.path / BATCHES   # the journal of --batch (batch_journal.BatchJournal)
        self.contaminated = self.path / CONTAMINATED
        self.pilot = self.path / PILOT

    def __repr__(self) -> str:
        return f"WorkFolder({str(self.path)!r})"

    # --- the rounds' journals ------------------------------------------------------------------

    def journal(self, round_: int, *, partial: bool = False) -> Path:
        """Round ``round_``'s journal (0: the seeds' answers); ``partial``: the finished steps of its
        unfinished items."""
        return self.path / f"round{round_}{'.partial' if partial else ''}.jsonl"

    @property
    def answers(self) -> Path:
        """The answers given to seeds that came without one: round 0's journal."""
        return self.journal(0)

    @property
    def rejects(self) -> Path:
        """Every rejected item with its reason, beside the output."""
        return self.out.with_name(self.out.stem + ".rejects.jsonl")

    def outputs(self) -> tuple[Path, ...]:
        """The files a finished run writes beside the folder (the provenance sidecar only in formats
        that need one): what a killed assembly may have left temporary files of."""
        return self.out, self.rejects, provenance_path(self.out)

    # --- state ---------------------------------------------------------------------------------

    @property
    def ingested(self) -> bool:
        """The input was read whole into ``seeds.jsonl``: from here on the folder holds work to keep."""
        return self.seeds_done.exists()

    def check(self) -> None:
        """The folder can be worked in, when it exists (checked before any work is done)."""
        if self.path.exists() and (not self.path.is_dir() or not os.access(self.path, os.W_OK | os.X_OK)):
            raise UserError(f"--out {self.out}: its work folder {self.path} cannot be written")

    def claim(self, fingerprint: dict, *, restart: bool) -> None:
        """Make the folder this run's: with ``restart`` drop an earlier run's work (all but the lock this
        process holds); a folder that never got past reading its input keeps nothing; otherwise the
        manifest must match ``fingerprint``, or the folder is another run's and is left alone."""
        if restart and self.path.exists():
            for entry in self.path.iterdir():
                if entry.name != LOCK:
                    shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        if self.manifest.exists() and not self.ingested:
            self.manifest.unlink()  # an earlier run stopped before reading its input: no work to keep
        if self.manifest.exists():
            if json.loads(self.manifest.read_text()) != fingerprint:
                raise UserError(f"{self.path} holds a run with other settings; rerun that command to finish it, "
                                f"or add --restart to drop it, or choose another --out")
            return
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.manifest) as fh:
            json.dump(fingerprint, fh, indent=2)

    def remove(self) -> None:
        """Drop the whole folder: for a run that failed before it did any work."""
        shutil.rmtree(self.path, ignore_errors=True)

    def drop_stale_temps(self) -> None:
        """Temporary files of a journal rewrite or stats write that a kill cut short."""
        for stale in self.path.glob(".*.tmp"):
            stale.unlink(missing_ok=True)

    def done_ids(self, round_: int) -> set[str]:
        return {row["seed_id"] for row in read(self.journal(round_))}

    def resume(self, round_: int, *, retry: str) -> set[str]:
        """The items round ``round_``'s journal holds as done, after dropping its rows whose reason is
        ``retry`` (evolve passes ``llm_error``: a provider that was down says nothing about the items,
        so this run tries them again; the failure taxonomy is the algorithm's, not the folder's); rows
        already carried into the next round's journal stay (round 0's never are: round 1 starts from
        the seeds). One pass over the journal; it is rewritten, atomically, only when there is
        something to drop."""
        journal = self.journal(round_)
        done, failed = set(), set()
        for row in read(journal):
            done.add(row["seed_id"])
            if row.get("reason") == retry:
                failed.add(row["seed_id"])
        if failed and round_ > 0:
            failed -= self.done_ids(round_ + 1)
        if failed:
            with atomic_write(journal) as fh:
                for row in read(journal):
                    if not (row["seed_id"] in failed and row.get("reason") == retry):
                        fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        return done - failed

    def write_stats(self, stats: dict) -> None:
        with atomic_write(self.stats) as fh:
            json.dump(stats, fh, indent=2)
