"""The UDON trainer, one component a module: `distributed` (ranks, gradient all-reduce),
`optimizer` (AdamW groups, frozen backbone), `step` (the compiled UDON step), `state`
(atomic checkpoints, exact resume), `report` (tables, results files, plots), `loop` (the run)."""
from .loop import TrainingDiverged, train

__all__ = ["TrainingDiverged", "train"]
