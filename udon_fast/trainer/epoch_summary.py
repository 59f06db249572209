"""summary.csv: one row per finished epoch, rewritten (atomically) as each epoch completes.

Columns: epoch, end_step (steps done after it), steps, the mean of each loss term over the epoch's
steps, mean images/s, each parameter group's learning rate at the epoch's last step (lr_<group>),
then the merged-index validation P@1 and mMP@5, mean and per domain (val_p_at_1, val_mmp_at_5,
val_p_at_1_<domain>, val_mmp_at_5_<domain>; empty where the run has no validation split).

Rows come from the same per-step records as metrics.jsonl (a `report.MetricsLog` listener), the
validations from `Progress.validations`; an epoch is written once all its rows and (when the run
validates) its validation are in, whatever order they arrive in.  A resumed run rebuilds its state
from the kept metrics.jsonl rows and the checkpoint's validations.
"""

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..files.outputs import atomic_write_text
from .tensorboard import LOSS_TERMS

FILE = "summary.csv"


class EpochSummary:
    """Accumulates per-epoch means and writes `out`/summary.csv (module docstring)."""

    def __init__(
        self, out: Path, steps_per_epoch: int, total_steps: int, val_domains: Sequence[str], lr_groups: Sequence[str]
    ):
        self.path = Path(out) / FILE
        self.steps_per_epoch, self.total_steps = steps_per_epoch, total_steps
        self.val_domains, self.lr_groups = list(val_domains), list(lr_groups)
        self.sums: dict[int, dict[str, float]] = {}
        self.counts: dict[int, int] = {}
        self.last_lr: dict[int, dict[str, float]] = {}
        self.validations: dict[int, Mapping[str, Any]] = {}
        self.written: list[int] = []

    def columns(self) -> list[str]:
        val = ["val_p_at_1", "val_mmp_at_5"] + [
            f"val_{m}_{d}" for d in self.val_domains for m in ("p_at_1", "mmp_at_5")
        ]
        return ["epoch", "end_step", "steps", *LOSS_TERMS, "images_per_s"] + [f"lr_{g}" for g in self.lr_groups] + val

    def epoch_steps(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Add metrics.jsonl rows; write the file when an epoch completes."""
        for row in rows:
            epoch = row["step"] // self.steps_per_epoch
            sums = self.sums.setdefault(epoch, dict.fromkeys([*LOSS_TERMS, "images_per_s"], 0.0))
            for key in sums:
                sums[key] += row[key]
            self.counts[epoch] = self.counts.get(epoch, 0) + 1
            if row["step"] == (epoch + 1) * self.steps_per_epoch - 1 or row["step"] == self.total_steps - 1:
                self.last_lr[epoch] = row["lr"]
        self.write()

    def validation(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Add `Progress.validations` entries (their "step" is the step count after the epoch)."""
        for record in records:
            self.validations[(record["step"] - 1) // self.steps_per_epoch] = record
        self.write()

    def _complete(self, epoch: int) -> bool:
        return (
            self.counts.get(epoch) == self.epoch_steps(epoch)
            and epoch in self.last_lr
            and (not self.val_domains or epoch in self.validations)
        )

    def write(self) -> None:
        """Rewrite the file when the set of complete epochs has changed."""
        epochs = [e for e in sorted(self.counts) if self._complete(e)]
        if not epochs or epochs == self.written:
            return
        self.written = epochs
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(self.columns())
        for epoch in epochs:
            n, sums, val = self.counts[epoch], self.sums[epoch], self.validations.get(epoch, {})
            cells = [epoch, min((epoch + 1) * self.steps_per_epoch, self.total_steps), n]
            cells += [sums[key] / n for key in (*LOSS_TERMS, "images_per_s")]
            cells += [self.last_lr[epoch].get(g, "") for g in self.lr_groups]
            cells += [val.get("mean_p_at_1", ""), val.get("mean_mmp_at_5", "")]
            cells += [val.get(m, {}).get(d, "") for d in self.val_domains for m in ("p_at_1", "mmp_at_5")]
            writer.writerow(cells)
        atomic_write_text(self.path, text.getvalue())
