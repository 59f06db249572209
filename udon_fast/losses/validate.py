"""Argument checks for the public loss API: clear errors naming the argument, before any kernel runs."""

import math

import torch

from .margins import resolve

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_head_scalars(margin_type: str, margin: float, margins, scale: float) -> None:
    """The margin arguments (`margins.resolve`: type known, parameters in their range) and scale > 0."""
    resolve(margin_type, margin, margins)
    check_positive("scale", scale)


def check_loss_weights(weights: dict[str, float]) -> None:
    for name, value in weights.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if sum(weights.values()) <= 0:
        raise ValueError(f"the loss weights {sorted(weights)} must not all be 0")


def _check_tensor(name: str, value, ndim: int, dtypes=FLOAT_DTYPES) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(value.shape)}")
    if value.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype in {[str(d) for d in dtypes]}, got {value.dtype}")
    return value


def check_head(
    *, emb_name: str, emb, weight_name: str, weight, labels, allow_float64: bool, allow_no_classes: bool = False
) -> None:
    """Shapes, dtypes and devices of one head: emb (B, D), weight (C, D), labels (B,) int64.

    allow_no_classes: C = 0 is valid (a class-parallel rank whose slice is empty).
    """
    dtypes = FLOAT_DTYPES + ((torch.float64,) if allow_float64 else ())
    _check_tensor(emb_name, emb, 2, dtypes)
    _check_tensor(weight_name, weight, 2, dtypes)
    _check_tensor("labels", labels, 1, (torch.int64,))
    if emb.shape[0] == 0:
        raise ValueError(f"{emb_name} must hold at least one row, got shape {tuple(emb.shape)}")
    if weight.shape[0] == 0 and not allow_no_classes:
        raise ValueError(f"{weight_name} must hold at least one class, got shape {tuple(weight.shape)}")
    if emb.shape[1] != weight.shape[1]:
        raise ValueError(
            f"{emb_name} has dimension {emb.shape[1]} but {weight_name} has {weight.shape[1]} (shapes "
            f"{tuple(emb.shape)} and {tuple(weight.shape)})"
        )
    if labels.shape[0] != emb.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but {emb_name} has {emb.shape[0]} rows")
    for name, tensor in ((weight_name, weight), ("labels", labels)):
        if tensor.device != emb.device:
            raise ValueError(f"{name} is on {tensor.device} but {emb_name} is on {emb.device}")


def check_pair(*, student_emb, teacher_emb, student_weight, teacher_weight) -> None:
    """The student and teacher heads must agree on batch size, class count, device and dtype."""
    if student_emb.shape[0] != teacher_emb.shape[0]:
        raise ValueError(f"student_emb has {student_emb.shape[0]} rows but teacher_emb has {teacher_emb.shape[0]}")
    if student_weight.shape[0] != teacher_weight.shape[0]:
        raise ValueError(
            f"student_weight has {student_weight.shape[0]} classes but teacher_weight has {teacher_weight.shape[0]}"
        )
    if student_emb.device != teacher_emb.device:
        raise ValueError(f"student_emb is on {student_emb.device} but teacher_emb is on {teacher_emb.device}")


def check_class_weights(name: str, weight: torch.Tensor) -> None:
    """Every row (class) of a raw classifier weight (C, D) is finite and has a non-zero norm that float32 holds.

    One pass over the weight (its row norms, a (C,) vector; no (C, D) temporary); only rows whose norm
    is 0 or not finite are looked at again, exactly.  A zero-norm row (all zeros, or values whose
    squares underflow float32) has no direction: its cosine, and so the loss, would be NaN.
    """
    norms = torch.linalg.vector_norm(weight, dim=1)
    suspect = torch.isfinite(norms).logical_not_().logical_or_(norms == 0)
    if not bool(suspect.any()):
        return
    rows = suspect.nonzero().flatten()
    subset = weight[rows]
    if not bool(torch.isfinite(subset).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    exact = torch.linalg.vector_norm(subset, dim=1, dtype=torch.promote_types(subset.dtype, torch.float32))
    zero = rows[exact == 0]
    if len(zero):
        raise ValueError(
            f"{name} row {int(zero[0])} (class {int(zero[0])}) has norm 0 (all zeros, or values too "
            f"small for a float32 norm): its cosine is undefined"
        )
    huge = rows[torch.isinf(exact)]
    if len(huge):
        raise ValueError(
            f"{name} row {int(huge[0])} (class {int(huge[0])}) is too large to normalise in float32 "
            f"(its squared norm overflows)"
        )


def check_values(
    embeddings: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    labels: torch.Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> None:
    """Data-dependent checks (they synchronise a GPU; skipped while torch.compile traces and when the
    caller passes `check_inputs=False`): labels in range (or equal to ignore_index), finite embeddings,
    finite class weights without zero rows (`check_class_weights`)."""
    if ignore_index is not None:
        labels = labels[labels != ignore_index]
    if labels.numel():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            hint = " (rows to skip need ignore_index)" if ignore_index is None and low < 0 else ""
            raise ValueError(f"labels must lie in [0, {num_classes}), got values in [{low}, {high}]{hint}")
    for name, tensor in embeddings.items():
        # ||E||_F^4 bounds the similarity term (sum_ij S_ij^2, S = E E^T): finite in float32 iff every
        # value is finite and the rows are not far beyond unit norm (finite rows x1e20 made the loss NaN).
        squared = torch.linalg.vector_norm(tensor, dtype=torch.float32).square()
        if not bool(torch.isfinite(squared * squared)):
            if not bool(torch.isfinite(tensor).all()):
                raise ValueError(f"{name} contains NaN or inf values")
            norms = torch.linalg.vector_norm(tensor, dim=1, dtype=torch.float64)
            row = int(norms.argmax())
            raise ValueError(
                f"{name} row {row} has norm {float(norms[row]):.3g}, too large for the loss in float32 "
                f"(it takes L2-normalised embeddings)"
            )
    for name, weight in weights.items():
        check_class_weights(name, weight)
