"""The comparison report: PNG plots and a Markdown file beside them (matplotlib, no display needed)."""
from __future__ import annotations

import json
from pathlib import Path

from ..algorithm.comparison import CompareSummary


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def write_report(summary: CompareSummary, reports: dict, split, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    methods = list(summary.methods)
    # 1. Failure rate by method, with its interval.
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(methods)), 4))
    est = [summary.methods[m].failure_rate.estimate for m in methods]
    low = [e - summary.methods[m].failure_rate.low for m, e in zip(methods, est)]
    high = [summary.methods[m].failure_rate.high - e for m, e in zip(methods, est)]
    ax.bar(range(len(methods)), est, yerr=[low, high], capsize=6, color="#4C72B0")
    ax.set_xticks(range(len(methods)), [Path(m).stem for m in methods], rotation=20, ha="right")
    ax.set_ylabel("failure rate (round 1)")
    ax.set_ylim(0, 1)
    ax.set_title(f"{summary.data}: failure rate, {summary.confidence:.0%} bootstrap interval")
    fig.tight_layout()
    fig.savefig(out / "failure_rate.png", dpi=110)
    plt.close(fig)
    # 2. Difficulty by round.
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in methods:
        rounds = summary.methods[m].per_round
        xs = [0] + [r.round for r in rounds]
        ys = [summary.seed_difficulty] + [r.difficulty for r in rounds]
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=Path(m).stem)
    ax.set_xlabel("round (0 = seed)")
    ax.set_ylabel("judged difficulty (1-10)")
    ax.set_ylim(0, 10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "difficulty.png", dpi=110)
    plt.close(fig)
    # 3. The t-SNE map.
    tsne = summary.diversity.tsne
    fig, ax = plt.subplots(figsize=(6, 5))
    for owner in dict.fromkeys(tsne.owner):
        idx = [i for i, o in enumerate(tsne.owner) if o == owner]
        ax.scatter([tsne.x[i] for i in idx], [tsne.y[i] for i in idx], s=14, alpha=0.7,
                   label=Path(owner).stem)
    ax.set_title(f"t-SNE of {summary.embeddings.split(' (')[0]} embeddings")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "diversity_tsne.png", dpi=110)
    plt.close(fig)

    lines = [f"# Method comparison on {summary.data}", "",
             f"{summary.dev_items} held-out dev items, {summary.rounds} rounds, baseline "
             f"`{summary.baseline}`, {summary.confidence:.0%} bootstrap intervals; embeddings: "
             f"{summary.embeddings}.", "",
             "| method | failure rate (round 1) | difference to baseline | failures by type | difficulty by round "
             "| length growth by round |", "|---|---|---|---|---|---|"]
    for m in methods:
        s = summary.methods[m]
        fr, d = s.failure_rate, s.difference_to_baseline
        diff = "-" if m == summary.baseline else f"{d.estimate:+.1%} [{d.low:+.1%}, {d.high:+.1%}]"
        fails = ", ".join(f"{k} {v}" for k, v in sorted(s.failures.items(), key=lambda kv: -kv[1])) or "-"
        diffi = " / ".join("-" if r.difficulty is None else f"{r.difficulty:.1f}" for r in s.per_round)
        growth = " / ".join(f"{r.length_growth:.2f}x" for r in s.per_round)
        lines.append(f"| `{m}` | {_pct(fr.estimate)} [{_pct(fr.low)}, {_pct(fr.high)}] | {diff} | {fails} "
                     f"| {diffi} | {growth} |")
    seed_d = summary.seed_difficulty
    lines += ["", f"Seed difficulty: {'-' if seed_d is None else f'{seed_d:.1f}'}; judge replies that were not a "
                  f"score: {summary.unscored_difficulty} on seeds, "
                  f"{sum(r.unscored for s in summary.methods.values() for r in s.per_round)} on evolved.",
              "", "## Diversity", "", f"k-means with k = {summary.diversity.k} over seeds and evolved "
              "instructions together.", "", "| group | instructions | mean pairwise distance | silhouette | clusters |",
              "|---|---|---|---|---|"]
    for owner, g in summary.diversity.groups.items():
        mpd = "-" if g.mean_pairwise_distance is None else f"{g.mean_pairwise_distance:.3f}"
        lines.append(f"| `{owner}` | {g.count} | {mpd} | {g.silhouette:.3f} | {g.clusters} |")
    lines += ["", "![failure rate](failure_rate.png)", "![difficulty](difficulty.png)",
              "![diversity](diversity_tsne.png)", ""]
    (out / "report.md").write_text("\n".join(lines), encoding="utf-8")
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str), encoding="utf-8")
    with open(out / "stages.jsonl", "w", encoding="utf-8") as fh:
        for spec, r in reports.items():
            for item_id, stages in r.stages.items():
                for s in stages:
                    fh.write(json.dumps({"method": spec, "item_id": item_id, "round": s.round,
                                         "instruction": s.instruction, "evolved": s.evolved,
                                         "failure": s.failure.value if s.failure else None,
                                         "difficulty": s.difficulty}, ensure_ascii=False) + "\n")
    return out / "report.md"
