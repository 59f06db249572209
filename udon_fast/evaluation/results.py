"""Evaluation results: results.json / results.md and the per-domain markdown tables (the training run and
`python -m udon_fast.evaluate` write them)."""

import json
from pathlib import Path
from typing import Any

from ..files.outputs import atomic_write_text

METRICS = (("p_at_1", "P@1"), ("mmp_at_5", "mMP@5"))
STAGES = ("baseline", "initial", "final")  # the evaluated stages of a results dict, in table order
COUNTS = (("num_queries", "queries"), ("num_queries_without_positives", "without positive"))
RULE_NOTES = {
    "miss": 'Queries without a relevant index item ("without positive") count as misses: P@1 0 and '
    "precision 0, kept in every mean (no_positive=miss, the official UnED metric).",
    "exclude": 'Queries without a relevant index item ("without positive") are left out of the means '
    "(no_positive=exclude; the official UnED metric counts them as misses).",
}
STAGES_NOTE = (
    "baseline: the pretrained backbone's own L2-normalised features, no training (student tables "
    "only); initial: the untrained UDON model; final: the trained model."
)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _rules(results: dict[str, Any]) -> list[str]:
    """The no_positive rules recorded in the leaves' means of the evaluated stages, in order of first
    appearance (other entries of `results`, such as the validation history, are not leaves)."""
    found = []
    for stage in (results[name] for name in STAGES if results.get(name)):
        for by_index in stage.values():
            for leaf in by_index.values():
                rule = leaf.get("mean", {}).get("no_positive")
                if rule is not None and rule not in found:
                    found.append(rule)
    return found


def results_table(results: dict[str, Any]) -> str:
    """Markdown tables, one per (embedding, index): rows = domains + mean, columns = per metric the
    baseline (when `results` has one), initial and final values, then the query counts (the mean row:
    sums); after a note on the no_positive rule of the leaves."""
    notes = [RULE_NOTES[rule] for rule in _rules(results) if rule in RULE_NOTES]
    sections = [" ".join(notes + ["On the mean row the query counts are totals over the domains."])]
    final = results.get("final") or results.get("initial") or {}
    stages = STAGES if "baseline" in results else STAGES[1:]
    for embedding, by_index in final.items():
        for index, leaf in by_index.items():
            header = (
                ["domain"]
                + [f"{stage} {label}" for _, label in METRICS for stage in stages]
                + [label for _, label in COUNTS]
            )
            lines = [
                f"### {embedding} embedding, {index} index",
                "",
                "| " + " | ".join(header) + " |",
                "|" + "---|" * len(header),
            ]
            for domain in [d for d in leaf if d != "mean"] + ["mean"]:
                cells = [domain]
                for key, _ in METRICS:
                    for stage in stages:
                        value = results.get(stage, {}).get(embedding, {}).get(index, {}).get(domain, {}).get(key)
                        cells.append(_fmt(value))
                cells += [str(leaf[domain].get(key, "-")) for key, _ in COUNTS]
                lines.append("| " + " | ".join(cells) + " |")
            sections.append("\n".join(lines))
    return "\n\n".join(sections) + "\n"


def write_results(out: Path, results: dict[str, Any], header: str) -> str:
    """Write results.json and results.md into `out` (atomically); return the markdown."""
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, sort_keys=True))
    note = f" {STAGES_NOTE}" if "baseline" in results else ""
    markdown = (
        f"# UDON results\n\n{header}\n\nMetrics in %, UnED kNN protocol (k = 5).{note}\n\n{results_table(results)}"
    )
    atomic_write_text(out / "results.md", markdown)
    return markdown
