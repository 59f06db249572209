"""Render a pytest-benchmark JSON (`--benchmark-json`) of the bench suite: a markdown report with one
table per group and PNG bar charts of the ratios (matplotlib, Agg backend).

Groups: a benchmark's `group`, else its bench file (`test_bench_data.py` -> "data").
Columns: case; mean time of the benchmarked call (ms below 1 s, else s); ratio vs reference;
peak memory (the `extra_info` figures whose name starts with "peak"; their unit is in the name);
the other `extra_info` figures.
Ratio vs reference: the first `extra_info` figure, in this order, named `ratio_vs_reference`,
`speedup_vs_reference`, containing "_vs_" (e.g. `dali_vs_pil`), or ending in "ratio" (e.g.
`end_to_end_ratio`), shown with its name since the direction is the bench's own (speedups: > 1 is
faster; time ratios: > 1 is slower).  Charts plot every such ratio figure of a group's cases.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PREFERRED_RATIOS = ("ratio_vs_reference", "speedup_vs_reference")


def group_name(bench: dict) -> str:
    """The benchmark's group, else its file's name without `test_bench_` and `.py`."""
    if bench.get("group"):
        return bench["group"]
    stem = Path(bench["fullname"].split("::", 1)[0]).stem
    return stem.removeprefix("test_bench_")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_ratio(key: str) -> bool:
    return "_vs_" in key or key.endswith("ratio")


def ratio_figures(extra: dict) -> dict[str, float]:
    """The numeric ratio figures of one case's extra_info, in display priority order."""
    ratios = {k: v for k, v in extra.items() if _is_number(v) and is_ratio(k)}
    ordered = [k for k in PREFERRED_RATIOS if k in ratios] + [k for k in ratios if k not in PREFERRED_RATIOS]
    return {k: ratios[k] for k in ordered}


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def _format_value(value) -> str:
    return f"{value:g}" if _is_number(value) else str(value)


def table_row(bench: dict) -> list[str]:
    extra = bench.get("extra_info", {})
    ratios = ratio_figures(extra)
    first = next(iter(ratios), None)
    ratio = f"{ratios[first]:g} ({first})" if first else "—"
    peaks = [f"{k}={_format_value(v)}" for k, v in extra.items() if k.startswith("peak")]
    others = [f"{k}={_format_value(v)}" for k, v in extra.items() if not k.startswith("peak") and k != first]
    return [
        bench["name"],
        format_seconds(bench["stats"]["mean"]),
        ratio,
        ", ".join(peaks) or "—",
        ", ".join(others) or "—",
    ]


def grouped(data: dict) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for bench in data.get("benchmarks", []):
        groups.setdefault(group_name(bench), []).append(bench)
    return groups


def machine_lines(data: dict) -> list[str]:
    """Machine facts: `machine_info["udon"]` (bench/conftest.py), else pytest-benchmark's own."""
    info = data.get("machine_info", {})
    facts = info.get("udon") or {
        "cpu_model": info.get("cpu", {}).get("brand_raw", "unknown"),
        "cores": info.get("cpu", {}).get("count"),
        "date": data.get("datetime"),
    }
    return [f"- {k}: {v}" for k, v in facts.items()]


def chart(group: str, benches: list[dict], path: Path) -> bool:
    """A horizontal bar chart of the group's ratio figures at `path`; False (no file) when it has none."""
    bars = [(f"{b['name']}: {k}", v) for b in benches for k, v in ratio_figures(b.get("extra_info", {})).items()]
    if not bars:
        return False
    labels, values = zip(*bars)
    fig, ax = plt.subplots(figsize=(9, 0.5 * len(bars) + 1.2))
    ax.barh(range(len(bars)), values, color="tab:blue")
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("ratio (see the figure's name for its direction; 1 = parity)")
    ax.set_title(f"{group}: ratios vs reference")
    for y, value in enumerate(values):
        ax.text(value, y, f" {value:g}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def render(data: dict, out_dir: Path) -> str:
    """Write one PNG chart per group with ratios into `out_dir`; return the markdown report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# udon_fast benchmarks", "", *machine_lines(data)]
    suite = data.get("udon_suite")
    if suite:
        lines.append(f"- quick: {suite['quick']}; pytest exit status: {suite['pytest_exit']}")
    header = ["case", "mean time", "ratio vs reference", "peak memory", "extra_info"]
    for group, benches in grouped(data).items():
        lines += ["", f"## {group}", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in table_row(b)) + " |" for b in benches]
        png = f"{group}.png"
        if chart(group, benches, out_dir / png):
            lines += ["", f"![{group} ratios]({png})"]
    return "\n".join(lines) + "\n"
