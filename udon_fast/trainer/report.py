"""Run outputs: results.json / results.md, the printed per-domain table, and PNG plots."""
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

METRICS = (("p_at_1", "P@1"), ("mmp_at_5", "mMP@5"))
STAGES_NOTE = ("baseline: the pretrained backbone's own L2-normalised features, no training (student tables "
               "only); initial: the untrained UDON model; final: the trained model.")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def results_table(results: dict[str, Any]) -> str:
    """Markdown tables, one per (embedding, index): rows = domains + mean, columns = per metric the
    baseline (when `results` has one), initial and final values."""
    sections = []
    final = results.get("final") or results.get("initial") or {}
    stages = (("baseline",) if "baseline" in results else ()) + ("initial", "final")
    for embedding, by_index in final.items():
        for index, leaf in by_index.items():
            header = ["domain"] + [f"{stage} {label}" for _, label in METRICS for stage in stages]
            lines = [f"### {embedding} embedding, {index} index", "",
                     "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            for domain in [d for d in leaf if d != "mean"] + ["mean"]:
                cells = [domain]
                for key, _ in METRICS:
                    for stage in stages:
                        value = results.get(stage, {}).get(embedding, {}).get(index, {}).get(domain, {}).get(key)
                        cells.append(_fmt(value))
                lines.append("| " + " | ".join(cells) + " |")
            sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def write_results(out: Path, results: dict[str, Any], header: str) -> str:
    """Write results.json and results.md into `out`; return the markdown."""
    (out / "results.json").write_text(json.dumps(results, indent=2, sort_keys=True), encoding="utf-8")
    note = f" {STAGES_NOTE}" if "baseline" in results else ""
    markdown = (f"# UDON results\n\n{header}\n\nMetrics in %, UnED kNN protocol (k = 5).{note}\n\n"
                f"{results_table(results)}")
    (out / "results.md").write_text(markdown, encoding="utf-8")
    return markdown


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_metrics(out: Path, records: list[dict[str, Any]]) -> list[Path]:
    """loss_per_domain.png (teacher and student CE per domain over steps) and sampler_weights.png."""
    if not records:
        return []
    domains = sorted({r["domain"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for ax, term in zip(axes, ("teacher_ce", "student_ce")):
        for domain in domains:
            rows = [r for r in records if r["domain"] == domain]
            ax.plot([r["step"] for r in rows], [r[term] for r in rows], label=domain, linewidth=1)
        ax.set_title(term.replace("_", " "))
        ax.set_xlabel("step")
    axes[0].legend()
    fig.tight_layout()
    loss_path = out / "loss_per_domain.png"
    fig.savefig(loss_path, dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for domain in domains:
        ax.plot([r["step"] for r in records], [r["sampler_weights"][domain] for r in records], label=domain)
    ax.set_title("sampler weights")
    ax.set_xlabel("step")
    ax.legend()
    fig.tight_layout()
    weights_path = out / "sampler_weights.png"
    fig.savefig(weights_path, dpi=100)
    plt.close(fig)
    return [loss_path, weights_path]
