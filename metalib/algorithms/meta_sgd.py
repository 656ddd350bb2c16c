"""Meta-SGD (Li, Zhou, Chen & Li 2017, arXiv:1707.09835): learn the inner step sizes too.

MAML's scalar α becomes a tensor α shaped like θ, one step size per weight, and the
adapted parameters are ``φ = θ − α ∘ ∇L_support(θ)``. α is meta-trained with θ by the same
outer loss. It is MAML with ``inner_lr`` given as a dict of tensors, so it reuses
:func:`metalib.algorithms.maml.meta_loss` unchanged. Taught in
``notebooks/03_beyond_maml.ipynb``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

PREFIX = "inner_lr."  # how learned step sizes are stored beside the weights in a checkpoint


def init_inner_lr(params: dict[str, Tensor], value: float = 0.01) -> dict[str, Tensor]:
    """One learnable step size per weight, all starting at ``value`` (the paper: U[0.005, 0.1];
    starting from MAML's α makes the two methods start from the same update)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"value={value!r} must be a finite number, e.g. 0.01.")
    return {name: torch.full_like(p.detach(), value).requires_grad_() for name, p in params.items()}


def check_inner_lr(inner_lr: dict[str, Tensor], params: dict[str, Tensor]) -> None:
    """Raise ``ValueError`` if the step sizes do not match ``params`` or are not finite."""
    if set(inner_lr) != set(params):
        raise ValueError(f"inner_lr names {sorted(inner_lr)} differ from params {sorted(params)}.")
    for name, lr in inner_lr.items():
        if lr.shape != params[name].shape:
            raise ValueError(
                f"inner_lr[{name!r}] has shape {tuple(lr.shape)}, "
                f"parameter has {tuple(params[name].shape)}."
            )
        if not torch.isfinite(lr).all():
            raise ValueError(f"inner_lr[{name!r}] has non-finite entries: lower outer_lr.")


def to_state(inner_lr: dict[str, Tensor]) -> dict[str, Tensor]:
    """Step sizes under checkpoint keys (``inner_lr.<parameter>``)."""
    return {PREFIX + name: lr.detach() for name, lr in inner_lr.items()}


def to_state_refs(inner_lr: dict[str, Tensor]) -> dict[str, Tensor]:
    """The step-size tensors themselves (not copies) under checkpoint keys, for an optimiser."""
    return {PREFIX + name: lr for name, lr in inner_lr.items()}


def from_state(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a checkpoint's tensors into ``(weights, inner_lr)``."""
    weights = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    lrs = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    return weights, lrs
