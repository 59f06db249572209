"""The AdamW step of the sampled rows of a (C, D) weight (Partial FC): one step for all K rows at once.

Each row has its own step count (`state["step"]` is (C,)), so the K rows have K bias corrections.  Two
implementations of torch.optim.AdamW's arithmetic (amsgrad off), chosen by the group and the weight:

- fused group, fp32 weight on CPU (the trainer's): the native kernel `udon_fast_native.row_adamw_`
  (kernels/native/row_adamw.cpp), in place, threads over rows: the arithmetic of torch's fused CPU
  kernel element for element, so a row moves bit for bit as torch's fused AdamW moves a parameter made
  of that row, stepped only when sampled;
- otherwise (for-each/single-tensor groups, other devices and dtypes): torch ops on the gathered (K, D)
  rows with the per-row scalars as (K, 1) columns, in torch's for-each/single-tensor AdamW's order
  (bit for bit that AdamW's on CPU), scattered back with index_copy_.

Neither loops over rows in Python nor reads the device from the host; the rows that were not sampled
are neither read nor written.  docs/kernels.md ("Partial FC") has the speed and the exactness.
"""

import torch

from ..native_library import load


def _group(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> dict:
    for group in optimizer.param_groups:
        if any(p is parameter for p in group["params"]):
            return group
    raise ValueError("the sampled classifier weight is not among the optimizer's parameters")


def row_state(optimizer: torch.optim.Optimizer, parameter: torch.Tensor) -> dict[str, torch.Tensor]:
    """The AdamW state of a row-sampled (C, D) parameter, created on first use: exp_avg and exp_avg_sq
    (C, D) like the parameter, step (C,) float32 on its device (one count per row)."""
    state = optimizer.state[parameter]
    if not state:
        state["step"] = torch.zeros(parameter.shape[0], dtype=torch.float32, device=parameter.device)
        state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
    if state["step"].shape != parameter.shape[:1]:
        raise ValueError(
            "this classifier weight was stepped whole by the optimizer (one step count); "
            "Partial FC keeps one per row: train it with sample_rate < 1 from the start"
        )
    return state


def _row_constants(
    lr: float | torch.Tensor,
    beta1: float,
    beta2: float,
    weight_decay: float,
    steps: torch.Tensor,
    dtype: torch.dtype,
    fused: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row scalars from the step counts after this step's increment, steps (K,) float32.

    Returns (decay, step_size, bias_correction2_sqrt) in `dtype`: decay () = 1 - lr * weight_decay,
    the other two (K, 1).  As torch computes them: the bias corrections in float64; lr in float64 too
    (the fused kernel reads a tensor lr as a double), except that the for-each/single-tensor AdamW does
    its arithmetic on a tensor lr in that tensor's dtype.  Rounded once to `dtype`.
    """
    count = steps.to(torch.float64).unsqueeze(1)
    bias_correction1 = 1 - torch.pow(beta1, count)
    bias_correction2_sqrt = (1 - torch.pow(beta2, count)).sqrt().to(dtype)
    if isinstance(lr, torch.Tensor) and not fused:
        lr = lr.to(steps.device)
        return (1 - lr * weight_decay).to(dtype), (lr / bias_correction1.to(lr.dtype)).to(dtype), bias_correction2_sqrt
    lr = torch.as_tensor(lr, dtype=torch.float64, device=steps.device)
    return (1 - lr * weight_decay).to(dtype), (lr / bias_correction1).to(dtype), bias_correction2_sqrt


def adamw_rows(optimizer: torch.optim.AdamW, sampled) -> None:
    """The AdamW update of `optimizer` (its group's options) on the sampled rows only, from rows.grad.

    `sampled` is a `losses.partial_fc.SampledRows`: parameter (C, D), index (K,) int64 distinct rows,
    rows (K, D) whose .grad (K, D) is the rows' gradient.  Each row moves as `torch.optim.AdamW` moves a
    parameter made of that row, with its own step count; the other rows and their state are not read.
    The group's lr may be a float or a 0-dim tensor.  Where the group is fused, a `found_inf` on the
    optimizer equal to 1 leaves rows, moments and counts as they were (as torch's fused AdamW does),
    decided without a host read on accelerators.  No-op when rows.grad is None; amsgrad is refused.
    """
    grad = sampled.rows.grad
    if grad is None:
        return
    parameter, index = sampled.parameter, sampled.index
    group, state = _group(optimizer, parameter), row_state(optimizer, parameter)
    if group["amsgrad"]:
        raise ValueError("Partial FC supports AdamW without amsgrad")
    found_inf = getattr(optimizer, "found_inf", None) if group["fused"] else None
    with torch.no_grad():
        if _native(group, parameter):
            torch.ops.udon_fast_native.row_adamw_(
                parameter,
                state["exp_avg"],
                state["exp_avg_sq"],
                state["step"],
                index,
                grad,
                torch.as_tensor(group["lr"], dtype=torch.float64),
                *group["betas"],
                group["weight_decay"],
                group["eps"],
                group["maximize"],
                _vector_width(),
                found_inf,
            )
        else:
            _torch_step(group, state, parameter, index, grad, found_inf)


def _native(group: dict, parameter: torch.Tensor) -> bool:
    """Whether the native kernel takes this step: a fused group's fp32 weight on CPU."""
    if group["fused"] and parameter.device.type == "cpu" and parameter.dtype == torch.float32:
        load()
        return True
    return False


def _vector_width() -> int:
    """Floats per vector of torch's fused CPU AdamW kernel (by torch's CPU capability): that kernel takes
    a row's columns [0, D - D % width) in its vector loop and the rest in its scalar tail."""
    return {"AVX512": 16, "AVX2": 8, "DEFAULT": 8}.get(torch.backends.cpu.get_cpu_capability(), 1)


def _torch_step(
    group: dict,
    state: dict,
    parameter: torch.Tensor,
    index: torch.Tensor,
    grad: torch.Tensor,
    found_inf: torch.Tensor | None,
) -> None:
    """The step in torch ops on the gathered (K, D) rows, in the order of torch's single-tensor AdamW."""
    beta1, beta2 = group["betas"]
    rows = parameter.index_select(0, index)
    exp_avg = state["exp_avg"].index_select(0, index)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, index)
    steps = state["step"].index_select(0, index).add_(1)
    grad = grad.neg() if group["maximize"] else grad
    decay, step_size, bias_correction2_sqrt = _row_constants(
        group["lr"], beta1, beta2, group["weight_decay"], steps, rows.dtype, group["fused"]
    )
    new_rows = rows * decay if group["weight_decay"] != 0 else rows.clone()
    new_exp_avg = exp_avg.lerp(grad, 1 - beta1)
    new_exp_avg_sq = (exp_avg_sq * beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (new_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
    new_rows.sub_(new_exp_avg * step_size / denom)
    if found_inf is not None:  # torch's fused AdamW: count, skip the kernel when found_inf == 1, uncount
        skip = found_inf == 1
        new_rows = torch.where(skip, rows, new_rows)
        new_exp_avg = torch.where(skip, exp_avg, new_exp_avg)
        new_exp_avg_sq = torch.where(skip, exp_avg_sq, new_exp_avg_sq)
        steps.sub_(found_inf)
    parameter.index_copy_(0, index, new_rows)
    state["exp_avg"].index_copy_(0, index, new_exp_avg)
    state["exp_avg_sq"].index_copy_(0, index, new_exp_avg_sq)
    state["step"].index_copy_(0, index, steps)
