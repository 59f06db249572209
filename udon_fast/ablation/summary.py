"""The ablation's outputs: ablation.json, ablation.md and ablation.png from the runs' results.json.

Every figure is the student embedding on the merged index (the UnED headline), per domain and
the mean over domains, as mean ± sample standard deviation over the seeds that finished.
"""

import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..extras import needs_extra

with needs_extra("train"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from ..files.outputs import atomic_write_text, writing  # noqa: E402
from ..trainer.report import read_metrics  # noqa: E402
from .grid import Cell, Variant  # noqa: E402

METRICS = (("p_at_1", "P@1"), ("mmp_at_5", "mMP@5"))
STAGES = ("initial", "final")


def mean_std(values: Sequence[float]) -> dict[str, float | int | None]:
    """{"mean", "std" (sample std, None for one value), "n"}."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "n": n}


def _merged(results: dict[str, Any], stage: str) -> dict[str, dict[str, float]]:
    return results[stage]["student"]["merged"]


def steps_per_domain(run: Path) -> dict[str, int]:
    """Training steps each domain got in a run (from its metrics.jsonl)."""
    return dict(sorted(Counter(record["domain"] for record in read_metrics(run / "metrics.jsonl")).items()))


def summarize(cells: Sequence[Cell], variants: Sequence[Variant]) -> dict[str, Any]:
    """ablation.json's content from the complete cells: every run's merged leaf and the statistics."""
    runs: dict[str, dict[str, Any]] = {}
    summary: dict[str, Any] = {}
    domains: list[str] = []
    for variant in variants:
        done = [c for c in cells if c.variant == variant and c.complete]
        results = {c.seed: json.loads((c.out / "results.json").read_text(encoding="utf-8")) for c in done}
        runs[variant.name] = {
            str(c.seed): {
                "out": str(c.out),
                **{stage: _merged(results[c.seed], stage) for stage in STAGES},
                "validation": results[c.seed].get("validation", []),
                "steps": steps_per_domain(c.out),
            }
            for c in done
        }
        if not results:
            continue
        first = _merged(next(iter(results.values())), "final")
        domains = domains or [d for d in first if d != "mean"] + ["mean"]
        summary[variant.name] = {
            stage: {
                domain: {
                    key: mean_std([_merged(r, stage)[domain][key] for r in results.values()]) for key, _ in METRICS
                }
                for domain in domains
            }
            for stage in STAGES
        }
        summary[variant.name]["seeds"] = sorted(results)
        summary[variant.name]["steps"] = {
            d: mean_std([runs[variant.name][str(seed)]["steps"].get(d, 0) for seed in results])["mean"]
            for d in domains
            if d != "mean"
        }
    data = {
        "variants": {v.name: {"label": v.label, "sampler": v.sampler, "distill": v.distill} for v in variants},
        "domains": domains,
        "summary": summary,
        "runs": runs,
    }
    first = next((c for c in cells if c.baseline and c.complete), None)
    if first is not None:
        results = json.loads((first.out / "results.json").read_text(encoding="utf-8"))
        if results.get("baseline"):
            data["off_the_shelf"] = _merged(results, "baseline")  # the same for every run: evaluated once
    return data


def _cell(stat: dict[str, Any]) -> str:
    if stat["std"] is None:
        return f"{100 * stat['mean']:.1f}"
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def markdown(data: dict[str, Any], header: str) -> str:
    """One table per metric: rows = variant x (initial, final), columns = domains and their mean."""
    domains, summary = data["domains"], data["summary"]
    parts = [
        f"# UDON ablation\n\n{header}\n\nStudent embedding, merged index, UnED kNN protocol (k = 5); "
        f"metrics in %, mean ± sample std over seeds (n = seeds finished). "
        f"`initial` is the untrained model, `final` the best validation checkpoint."
    ]
    for key, label in METRICS:
        lines = [
            f"## {label}",
            "",
            "| variant | stage | n | " + " | ".join(domains) + " |",
            "|---|---|---|" + "---|" * len(domains),
        ]
        for name, stats in summary.items():
            for stage in STAGES:
                cells = [_cell(stats[stage][d][key]) for d in domains]
                n = stats[stage][domains[0]][key]["n"]
                lines.append(f"| {data['variants'][name]['label']} | {stage} | {n} | " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    if "off_the_shelf" in data:
        mean = data["off_the_shelf"]["mean"]
        parts.append(
            "The off-the-shelf backbone (its own features, no training; evaluated once for the grid): "
            + ", ".join(f"{label} {100 * mean[key]:.1f}" for key, label in METRICS)
            + " (mean over domains)."
        )
    names = [d for d in domains if d != "mean"]
    lines = [
        "## Training steps per domain (mean over seeds)",
        "",
        "| variant | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for name, stats in summary.items():
        lines.append(
            f"| {data['variants'][name]['label']} | " + " | ".join(f"{stats['steps'][d]:.0f}" for d in names) + " |"
        )
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def chart(data: dict[str, Any], path: Path) -> Path:
    """Grouped bars per domain (and the mean): final P@1 and mMP@5 of each variant, std as error bars,
    the untrained model's value as a dashed tick."""
    domains, summary = data["domains"], data["summary"]
    names = list(summary)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(6 + 1.6 * len(domains), 4.2), sharey=True)
    width = 0.8 / max(1, len(names))
    for ax, (key, label) in zip(axes, METRICS):
        for i, name in enumerate(names):
            stats = summary[name]["final"]
            xs = [j - 0.4 + width * (i + 0.5) for j in range(len(domains))]
            ax.bar(
                xs,
                [100 * stats[d][key]["mean"] for d in domains],
                width,
                yerr=[100 * (stats[d][key]["std"] or 0.0) for d in domains],
                capsize=2,
                label=data["variants"][name]["label"],
            )
        if names:
            initial = summary[names[0]]["initial"]
            for j, d in enumerate(domains):
                ax.hlines(
                    100 * initial[d][key]["mean"],
                    j - 0.45,
                    j + 0.45,
                    colors="k",
                    linestyles="dashed",
                    linewidth=1,
                    label="untrained" if j == 0 else None,
                )
        ax.set_xticks(range(len(domains)), domains)
        ax.set_title(f"{label} (student, merged index)")
    axes[0].set_ylabel("%")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    with writing(path):
        fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_outputs(out: Path, cells: Sequence[Cell], variants: Sequence[Variant], header: str) -> dict[str, Any]:
    """Write ablation.json and ablation.md (atomically) and ablation.png into `out` (from whatever runs
    are complete)."""
    data = summarize(cells, variants)
    data["header"] = header
    atomic_write_text(out / "ablation.json", json.dumps(data, indent=2, sort_keys=True))
    atomic_write_text(out / "ablation.md", markdown(data, header))
    if data["summary"]:
        chart(data, out / "ablation.png")
    return data
