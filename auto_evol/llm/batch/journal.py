"""The batch journal: what keeps a kill -9 or Ctrl-C from paying for a batch twice (see batcher.py).

One fsynced JSONL line per event (intent, batch id, done, void), read back on first use under an
exclusive lock (one process per journal); which batch holds a request, which intents a rerun must
look for, which results this process already delivered.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

from ...storage import locks
from ...storage.checkpoint import Journal, read


# --- the journal ---------------------------------------------------------------------------------------

class BatchJournal:
    """``batches.jsonl``: intents, batch ids, done and void marks (see the module's docstring); one line
    per event, fsynced before the step it guards goes on. Read, under its lock, on first use (``open``);
    the lock is held until ``close``."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock = threading.RLock()
        self._held: contextlib.ExitStack | None = None
        self._intents: dict[str, dict] = {}
        self._batch_intent: dict[str, str] = {}   # batch id -> intent key
        self._holding: dict[str, list[str]] = {}  # custom id -> the intents that carried it, in order
        self._loaded: set[str] = set()            # intent keys read from disk: the only ones recovery resolves
        self.pending: set[str] = set()            # intent keys this process is submitting now
        self.delivered: set[str] = set()          # custom ids whose result this process delivered (counted)

    def open(self) -> "BatchJournal":
        """Take the journal's lock and read it (once; again after ``close``). A journal another process
        holds is refused in one line naming it."""
        with self._lock:
            if self._held is None:
                held = contextlib.ExitStack()
                held.enter_context(locks.hold(self.lock_path, f"the batch journal {self.path}"))
                try:
                    self._intents, self._batch_intent, self._holding = {}, {}, {}
                    if self.path.exists():
                        Journal(self.path).close()   # cuts a line torn by a kill
                        for row in read(self.path):
                            self._apply(row)
                    self._loaded = set(self._intents)
                except BaseException:
                    held.close()
                    raise
                self._held = held
        return self

    def close(self) -> None:
        """Let go of the lock (the verb is done with the journal)."""
        with self._lock:
            held, self._held = self._held, None
            if held is not None:
                held.close()

    @property
    def intents(self) -> dict[str, dict]:
        self.open()
        return self._intents

    @property
    def batch_intent(self) -> dict[str, str]:
        self.open()
        return self._batch_intent

    def _apply(self, row: dict) -> None:
        if "custom_ids" in row:
            self._intents[row["intent"]] = {**row, "batch": None, "done": False, "void": False}
            for cid in row["custom_ids"]:
                self._holding.setdefault(cid, []).append(row["intent"])
        elif "batch" in row and row.get("intent") in self._intents:
            # A batch id wins over an earlier void: the batch exists, whatever a recovery concluded.
            self._intents[row["intent"]].update(batch=row["batch"], void=False)
            self._batch_intent[row["batch"]] = row["intent"]
        elif "done" in row and row["done"] in self._batch_intent:
            self._intents[self._batch_intent[row["done"]]]["done"] = True
        elif "void" in row and row["void"] in self._intents:
            intent = self._intents[row["void"]]
            if intent["batch"] is None:
                intent["void"] = True

    def _write(self, row: dict) -> None:
        with self._lock:
            self.open()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._apply(row)

    def intend(self, key: str, custom_ids: list[str], provider: str, model: str) -> None:
        self._write({"intent": key, "custom_ids": custom_ids, "provider": provider, "model": model,
                     "time": time.time()})

    def submitted(self, batch_id: str, key: str, **extra) -> None:
        self._write({"batch": batch_id, "intent": key, **extra})

    def done(self, batch_id: str) -> None:
        self._write({"done": batch_id})

    def void(self, key: str) -> None:
        self._write({"void": key})

    def _latest(self, custom_id: str) -> dict | None:
        """The last intent that carried ``custom_id`` and was not void."""
        self.open()
        for key in reversed(self._holding.get(custom_id, ())):
            intent = self._intents[key]
            if not intent["void"]:
                return intent
        return None

    def batch_of(self, custom_id: str) -> str | None:
        """The batch that last carried ``custom_id`` (void intents, which made none, left out); None when
        none did, or when the last intent's batch is not known (recovery resolves those first)."""
        intent = self._latest(custom_id)
        return intent["batch"] if intent is not None else None

    def in_doubt(self, custom_id: str) -> bool:
        """Whether the last intent that carried ``custom_id`` may have made a batch this process could
        not learn of (a submission interrupted or not looked up, and not under way): submitting it
        again could pay twice; a rerun's recovery looks for it."""
        intent = self._latest(custom_id)
        return intent is not None and intent["batch"] is None and intent["intent"] not in self.pending

    def unresolved(self, provider: str, model: str) -> list[dict]:
        """The intents read from disk whose batch is not known: those of an earlier process, never one
        written by this process (its submitter, maybe another role's Batcher, resolves it)."""
        self.open()
        return [i for k, i in self._intents.items() if k in self._loaded and i["batch"] is None
                and not i["void"] and i.get("provider") == provider and i.get("model") == model]
