"""What a comparison of evolving methods finds, as data: each dev item's stages per method (Stage,
MethodReport), and the finished comparison's summary (CompareSummary and its parts).

Apart from the verb (compare.py) so that whatever reads a comparison, the report, the terminal
table, MLflow's logger or a caller, depends on these types and not on the run that makes them.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..llm import cost as cost_mod
from . import stats
from .failure import Failure


@dataclass
class Stage:
    round: int
    instruction: str                  # the instruction after this round (unchanged when it failed)
    evolved: bool
    failure: Failure | None
    difficulty: int | None = None


@dataclass
class MethodReport:
    name: str
    stages: dict[str, list[Stage]] = field(default_factory=dict)   # dev item id -> rounds 1..R

    def flags(self, round_: int, items: list[str]) -> list[bool]:
        return [self.stages[i][round_ - 1].failure is not None for i in items]


# The summary: typed, so the report, the terminal table and a caller of compare() read fields a type
# checker knows rather than string keys; frozen, as it is the record of a finished comparison.
# to_dict() is summary.json's content, key for key, and what the MLflow logger reads.


@dataclass(frozen=True)
class RoundSummary:
    round: int
    failure_rate: float               # of all dev items after this round (a round that failed counts)
    difficulty: float | None          # the judge's mean over the instructions this round changed; None: none scored
    unscored: int                     # judge replies that were not a score
    length_growth: float              # mean words of the instruction over words of its seed

    def to_dict(self) -> dict:
        return {"round": self.round, "failure_rate": self.failure_rate, "difficulty": self.difficulty,
                "unscored": self.unscored, "length_growth": self.length_growth}


def _interval(i: stats.Interval) -> dict:
    return {"estimate": i.estimate, "low": i.low, "high": i.high}


@dataclass(frozen=True)
class MethodSummary:
    failure_rate: stats.Interval              # round 1, with its bootstrap interval
    difference_to_baseline: stats.Interval    # paired, on the same dev items; negative: fails less
    failures: dict[str, int]                  # round-1 failures by type
    per_round: tuple[RoundSummary, ...]
    evolved_instructions: int

    def to_dict(self) -> dict:
        return {"failure_rate": _interval(self.failure_rate),
                "difference_to_baseline": _interval(self.difference_to_baseline),
                "failures": dict(self.failures), "per_round": [r.to_dict() for r in self.per_round],
                "evolved_instructions": self.evolved_instructions}


@dataclass(frozen=True)
class GroupDiversity:
    count: int
    mean_pairwise_distance: float | None      # cosine; None for a group of one
    silhouette: float
    clusters: int                             # k-means clusters the group's instructions fall in

    def to_dict(self) -> dict:
        return {"count": self.count, "mean_pairwise_distance": self.mean_pairwise_distance,
                "silhouette": self.silhouette, "clusters": self.clusters}


@dataclass(frozen=True)
class TsneMap:
    """The 2-D points of the scatter plot, one per instruction, and whose each is."""
    x: tuple[float, ...]
    y: tuple[float, ...]
    owner: tuple[str, ...]


@dataclass(frozen=True)
class Diversity:
    k: int
    groups: dict[str, GroupDiversity]         # "seeds", then each method
    tsne: TsneMap

    def to_dict(self) -> dict:
        """Without the t-SNE points: they are the plot's data, one pair per instruction, not a result."""
        return {"k": self.k, "groups": {owner: g.to_dict() for owner, g in self.groups.items()}}


@dataclass(frozen=True)
class CompareSummary:
    data: str
    dev_items: int
    rounds: int
    baseline: str
    confidence: float
    embeddings: str                           # which embedding the diversity numbers come from
    methods: dict[str, MethodSummary]         # in --methods order
    seed_difficulty: float | None
    unscored_difficulty: int                  # seed judge replies that were not a score
    diversity: Diversity
    calls: dict[str, dict] = field(default_factory=dict)   # LLM usage per role (evol, judge)
    seconds: float = 0.0
    run_id: str | None = None                 # the MLflow run, once logged
    costs: dict = field(default_factory=dict)   # role -> cost.Cost of ``calls`` (cost.py's prices)

    def to_dict(self) -> dict:
        """summary.json's content; the run id only once there is one (summary.json is written before)."""
        out = {"data": self.data, "dev_items": self.dev_items, "rounds": self.rounds, "baseline": self.baseline,
               "confidence": self.confidence, "embeddings": self.embeddings,
               "methods": {name: m.to_dict() for name, m in self.methods.items()},
               "seed_difficulty": self.seed_difficulty, "unscored_difficulty": self.unscored_difficulty,
               "calls": {role: dict(usage) for role, usage in self.calls.items()}, "seconds": self.seconds,
               "cost": cost_mod.report(self.costs),
               "diversity": self.diversity.to_dict()}
        if self.run_id is not None:
            out["run_id"] = self.run_id
        return out
