"""The declared contract of a fused head-loss backend (`chunked`, `triton_backend`, `native_backend`).

A backend module exposes `BACKEND = FusedBackend(name, forward, backward)`; `backends.py` finds the
module by name and `head_op.register_head_backend` registers its pair as custom ops, after
`check_backend` has compared both functions with the `HeadForward` / `HeadBackward` signatures.
Every tensor argument is keyword-only (four same-typed (B, D) / (C, D) tensors must never be passed
by position).  Shapes, dtypes and gradients: `head_op.py`'s docstring.
"""

import inspect
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

Rows = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class HeadForward(Protocol):
    """forward -> (ce_t (B,) f32, ce_s (B,) f32, kl (B,) f32, stats (B, 4) f32, columns `layout.Stat`)."""

    def __call__(
        self,
        *,
        e_t: torch.Tensor,
        w_t: torch.Tensor,
        e_s: torch.Tensor | None,
        w_s: torch.Tensor | None,
        labels: torch.Tensor,
        z_y: torch.Tensor,
        dz_y: torch.Tensor,
        scale: float,
        tau_t: float,
        tau_s: float,
    ) -> Rows: ...


class HeadBackward(Protocol):
    """backward -> (d_e_t, d_w_t, d_e_s, d_w_s) in the input dtypes; the student pair None for a single head."""

    def __call__(
        self,
        *,
        g_ce_t: torch.Tensor,
        g_ce_s: torch.Tensor,
        g_kl: torch.Tensor,
        e_t: torch.Tensor,
        w_t: torch.Tensor,
        e_s: torch.Tensor | None,
        w_s: torch.Tensor | None,
        labels: torch.Tensor,
        stats: torch.Tensor,
        z_y: torch.Tensor,
        dz_y: torch.Tensor,
        scale: float,
        tau_t: float,
        tau_s: float,
    ) -> Rows: ...


@runtime_checkable
class HeadBackend(Protocol):
    """What `backends.py` registers: a name (the op is `udon_fast::head_loss_<name>`) and the pair."""

    name: str
    forward: HeadForward
    backward: HeadBackward


@dataclass(frozen=True)
class FusedBackend:
    """The `HeadBackend` record each backend module exposes as `BACKEND`."""

    name: str
    forward: HeadForward
    backward: HeadBackward


def argument_names(contract: type) -> tuple[str, ...]:
    """The keyword-only argument names of a contract's `__call__`, in order."""
    return tuple(inspect.signature(contract.__call__).parameters)[1:]


def _check_function(backend_name: str, role: str, function, contract: type) -> None:
    parameters = inspect.signature(function).parameters.values()
    got = tuple(p.name for p in parameters)
    positional = [p.name for p in parameters if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    if got != argument_names(contract) or positional:
        raise TypeError(
            f"fused backend {backend_name!r}: {role}{inspect.signature(function)} does not match the "
            f"contract {role}(*, {', '.join(argument_names(contract))})"
        )


def check_backend(backend) -> None:
    """Raise TypeError unless `backend` is a `HeadBackend` whose functions take exactly the contract's
    keyword-only arguments."""
    if not isinstance(backend, HeadBackend):
        raise TypeError(f"a fused backend needs name, forward and backward, got {type(backend).__name__}")
    _check_function(backend.name, "forward", backend.forward, HeadForward)
    _check_function(backend.name, "backward", backend.backward, HeadBackward)
