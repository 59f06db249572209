"""The AdamW step of the sampled rows of a (C, D) weight (Partial FC), one vectorised step for all K rows.

Each row has its own step count (`state["step"]` is (C,)), so the K rows have K bias corrections.  The
step gathers the rows, their gradient, moments and counts, runs torch's AdamW arithmetic on the (K, D)
block with the per-row constants as (K, 1) columns, and scatters the results back with index_copy_:
no Python loop over rows, no host read.  The rows that were not sampled are neither read nor written.

The arithmetic is torch.optim.AdamW's (amsgrad and maximize-free paths of torch/optim/adam.py and the
fused CPU kernel), in its order: the per-row scalars in float64 as torch computes them on the host
(bias corrections 1 - beta ** step, step size lr / bias_correction1, sqrt of bias_correction2, the
decay factor 1 - lr * weight_decay), rounded once to the weight's dtype; then, elementwise in the
weight's dtype, param * decay, exp_avg.lerp_(grad, 1 - beta1) (torch's lerp: one fused multiply-add),
exp_avg_sq * beta2 + (1 - beta2) * grad * grad, denom = sqrt(exp_avg_sq) / sqrt(bc2) + eps and
param - step_size * exp_avg / denom.  Where torch's own kernels round the same way, a row moves bit for
bit as `torch.optim.AdamW` moves a parameter made of that row; the exceptions are stated in
docs/kernels.md ("Partial FC") and measured by tests/test_row_adamw.py.
"""
import torch


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
        raise ValueError("this classifier weight was stepped whole by the optimizer (one step count); "
                         "Partial FC keeps one per row: train it with sample_rate < 1 from the start")
    return state


def _row_constants(lr: float | torch.Tensor, beta1: float, beta2: float, weight_decay: float,
                   steps: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row scalars from the step counts after this step's increment, steps (K,) float32.

    Returns (decay, step_size, bias_correction2_sqrt) in `dtype`: decay () = 1 - lr * weight_decay,
    the other two (K, 1).  Computed in float64 like torch's host-side scalars, then rounded once.
    """
    lr = torch.as_tensor(lr, dtype=torch.float64, device=steps.device)
    count = steps.to(torch.float64).unsqueeze(1)
    bias_correction1 = 1 - torch.pow(beta1, count)
    bias_correction2 = 1 - torch.pow(beta2, count)
    return ((1 - lr * weight_decay).to(dtype), (lr / bias_correction1).to(dtype),
            bias_correction2.sqrt().to(dtype))


def _sqrt(x: torch.Tensor, fused: bool) -> torch.Tensor:
    """sqrt(x) as the AdamW variant takes it: torch.sqrt for the for-each/single-tensor AdamW; on CPU,
    torch's fused kernel uses the correctly rounded vector sqrt instruction, which torch.sqrt (a vector
    math library call on CPU) may miss by an ulp, so there it is taken in float64 and rounded once
    (exact: float64 holds twice float32's precision plus two bits)."""
    if fused and x.device.type == "cpu" and x.dtype == torch.float32:
        return x.double().sqrt_().float()
    return x.sqrt()


def adamw_rows(optimizer: torch.optim.AdamW, sampled) -> None:
    """The AdamW update of `optimizer` (its group's options) on the sampled rows only, from rows.grad.

    `sampled` is a `losses.partial_fc.SampledRows`: parameter (C, D), index (K,) int64 distinct rows,
    rows (K, D) whose .grad (K, D) is the rows' gradient.  Each row moves as `torch.optim.AdamW` moves a
    parameter made of that row, with its own step count; the other rows and their state are not read.
    The group's lr may be a float or a 0-dim tensor.  Where the group is fused (as torch's fused AdamW
    does) a `found_inf` on the optimizer equal to 1 leaves rows, moments and counts as they were, decided
    on the device.  No-op when rows.grad is None; amsgrad is refused.
    """
    grad = sampled.rows.grad
    if grad is None:
        return
    group, state = _group(optimizer, sampled.parameter), row_state(optimizer, sampled.parameter)
    if group["amsgrad"]:
        raise ValueError("Partial FC supports AdamW without amsgrad")
    beta1, beta2 = group["betas"]
    index, parameter = sampled.index, sampled.parameter
    found_inf = getattr(optimizer, "found_inf", None) if group["fused"] else None
    with torch.no_grad():
        rows = parameter.index_select(0, index)
        exp_avg = state["exp_avg"].index_select(0, index)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, index)
        steps = state["step"].index_select(0, index).add_(1)
        grad = grad.neg() if group["maximize"] else grad
        decay, step_size, bias_correction2_sqrt = _row_constants(
            group["lr"], beta1, beta2, group["weight_decay"], steps, rows.dtype)
        new_rows = rows * decay if group["weight_decay"] != 0 else rows.clone()
        new_exp_avg = exp_avg.lerp(grad, 1 - beta1)
        new_exp_avg_sq = (exp_avg_sq * beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (_sqrt(new_exp_avg_sq, group["fused"]) / bias_correction2_sqrt).add_(group["eps"])
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
