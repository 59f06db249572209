"""The ablation of UDON's parts (`python -m udon_fast.ablate`): the grid of runs and its report."""

from .grid import VARIANTS, Cell, GridError, Variant, make_cells
from .summary import summarize, write_outputs

__all__ = ["VARIANTS", "Cell", "GridError", "Variant", "make_cells", "summarize", "write_outputs"]
