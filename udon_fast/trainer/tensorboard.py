"""`--tensorboard`: the run's curves as TensorBoard event files in --out/tb (`torch.utils.tensorboard`).

Fed from the same per-step rows as metrics.jsonl (a `report.MetricsLog` listener) and from each
epoch's validation.  Tags:
    loss/<domain>/<term>          each loss term (total, teacher_ce, student_ce, kl, similarity) of a
                                  step, under the domain the step trained on
    sampler_weight/<domain>       the dynamic sampler's weights
    lr/<group>                    learning rate of each parameter group
    images_per_s                  training throughput of the step
    val/p_at_1/<domain|mean>      merged-index validation P@1 at the epoch's last step
    val/mmp_at_5/<domain|mean>    and mMP@5
A row of step s is logged at step s; an epoch's validation at the index of its last step.  The writer
opens with purge_step = the step the run starts from (0, or where a resumed run continues), so
TensorBoard drops whatever an interrupted run logged from there on (rows and validations after its
last.pt, everything when it stopped before its first checkpoint) and nothing is doubled.
"""

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..extras import needs_extra

with needs_extra("train"):
    from torch.utils.tensorboard import SummaryWriter

from ..losses.api import UDONLossOutput

LOSS_TERMS = UDONLossOutput._fields
FOLDER = "tb"


class TensorBoardLog:
    """Event files under `out`/tb; `purge_step`: the step the run starts from (events of earlier
    processes at or after it are dropped)."""

    def __init__(self, out: Path, purge_step: int):
        self.writer = SummaryWriter(log_dir=str(Path(out) / FOLDER), purge_step=purge_step)

    def rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Log metrics.jsonl rows (keys: step, domain, the loss terms, lr, sampler_weights, images_per_s)."""
        add = self.writer.add_scalar
        for row in rows:
            step, domain = row["step"], row["domain"]
            for term in LOSS_TERMS:
                add(f"loss/{domain}/{term}", row[term], step)
            for name, weight in row["sampler_weights"].items():
                add(f"sampler_weight/{name}", weight, step)
            for group, lr in row["lr"].items():
                add(f"lr/{group}", lr, step)
            add("images_per_s", row["images_per_s"], step)

    def validation(self, record: Mapping[str, Any]) -> None:
        """Log one `Progress.validations` entry (step = the step count after the epoch)."""
        step = record["step"] - 1
        for metric in ("p_at_1", "mmp_at_5"):
            for domain, value in record.get(metric, {}).items():
                self.writer.add_scalar(f"val/{metric}/{domain}", value, step)
            if f"mean_{metric}" in record:
                self.writer.add_scalar(f"val/{metric}/mean", record[f"mean_{metric}"], step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
