"""Training-run outputs: the per-step rows of metrics.jsonl and PNG plots (results.json / results.md and the
per-domain table: `udon_fast.evaluation.results`)."""

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..extras import needs_extra

with needs_extra("train"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from ..errors import InputError  # noqa: E402
from ..files.outputs import writing  # noqa: E402


class MetricsLog:
    """metrics.jsonl opened for appending: one JSON line per step, flushed; errors name the file.
    `listeners`: callables given each list of records as it is written (TensorBoard, summary.csv)."""

    def __init__(self, path: Path, listeners: Sequence[Callable[[list[dict[str, Any]]], None]] = ()):
        self.path = path
        self.listeners = list(listeners)
        with writing(path):
            self.file = path.open("a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        with writing(self.path):
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
        for listener in self.listeners:
            listener([record])

    def close(self) -> None:
        with writing(self.path):
            self.file.close()


class StepRows:
    """The per-step rows of metrics.jsonl, produced here and only here.

    `add` keeps a step's loss terms on the device; `read` brings every pending step's terms to the host
    in one transfer (the loop's log points); `write` completes the rows and appends them to `metrics`
    (None on ranks that write nothing).  A row: the loss terms (`fields`, Python floats of the float32
    values), step, epoch, domain, lr, sampler_weights, images_per_s (the mean over the log interval:
    the device runs ahead of the host, so a step's own wall time is not observable without a sync).
    """

    def __init__(self, metrics: MetricsLog | None, fields: tuple[str, ...]):
        self.metrics, self.fields = metrics, fields
        self.pending: list[tuple[torch.Tensor, dict[str, Any]]] = []
        self.values: list[list[float]] = []
        self.images = 0
        self.tick = time.perf_counter()

    def add(self, terms: torch.Tensor, images: int, **row: Any) -> None:
        """One step: `terms` (len(fields),) on the device; `images` in the step (all ranks); the row's
        other fields."""
        self.pending.append((terms, row))
        self.images += images

    def complete_last(self, **row: Any) -> None:
        """Add fields to the last step's row (those known only after its terms were checked)."""
        self.pending[-1][1].update(row)

    def read(self) -> list[dict[str, float]]:
        """The loss terms of every pending step, {field: value}, in step order (one device-to-host copy
        for the steps not read yet)."""
        unread = [terms for terms, _ in self.pending[len(self.values) :]]
        if unread:
            self.values += torch.stack(unread).tolist()
        return [dict(zip(self.fields, values)) for values in self.values]

    def write(self) -> tuple[list[dict[str, Any]], float]:
        """Append the pending rows to metrics.jsonl; return them and the interval's images/s."""
        now = time.perf_counter()
        speed = self.images / max(now - self.tick, 1e-9)
        rows = [{**terms, **row, "images_per_s": speed} for terms, (_, row) in zip(self.read(), self.pending)]
        if self.metrics is not None:
            for row in rows:
                self.metrics.append(row)
        self.pending, self.values, self.images, self.tick = [], [], 0, now
        return rows, speed


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; a torn last line (a kill or a full disk mid-write) is dropped."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise InputError(f"{path}: line {number} is not JSON ({exc})") from exc
    return records


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
    with writing(loss_path):
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
    with writing(weights_path):
        fig.savefig(weights_path, dpi=100)
    plt.close(fig)
    return [loss_path, weights_path]
