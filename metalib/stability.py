"""Why repeated inner steps overshoot: the growth factor of one inner step.

Near θ an inner step ``φ ← φ − α ∘ ∇L(φ)`` is the linear map ``I − diag(α) H``, with ``H``
the Hessian of the task's support loss. Repeating it multiplies the distance to the
minimum along an eigenvector by that eigenvalue's magnitude, so the steps settle only while
every magnitude is below 1 and blow up once one exceeds it. With one scalar α and a convex
loss that is the classic ``α λ_max < 2``; Meta-SGD's learned per-weight steps (some of them
negative) can exceed 1 along directions a scalar step never would. For ANIL the adapted head
is a linear map of fixed features, its support loss is exactly quadratic, and the factor is
exact, not a linearisation. Taught in ``notebooks/03_beyond_maml.ipynb``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, hessian

RELATIVE_ZERO = 1e-6  # an eigenvalue of diag(α) H this small against the largest is zero


def _flat_hessian(loss_of, group: dict[str, Tensor]) -> Tensor:
    with warnings.catch_warnings():
        # forward-mode AD's first use compiles torch's own decompositions with the
        # deprecated torch.jit.script (a FutureWarning in torch 2.14, a DeprecationWarning in
        # 2.11): torch's warning, not this code's
        warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")  # any category
        blocks = hessian(loss_of)(group)
    names = list(group)
    rows = [
        torch.cat([blocks[a][b].reshape(group[a].numel(), group[b].numel()) for b in names], 1)
        for a in names
    ]
    return torch.cat(rows, 0)


def _check(x_support: Tensor, y_support: Tensor, params, groups) -> None:
    if x_support.ndim != 3 or x_support.shape != y_support.shape:
        raise ValueError(
            f"x_support {tuple(x_support.shape)} and y_support {tuple(y_support.shape)} "
            "must both be (tasks, K, 1)."
        )
    for label, names in groups.items():
        unknown = sorted(set(names) - set(params))
        if not names or unknown:
            raise ValueError(f"group {label!r} names {unknown or 'no'} parameters of the model.")


def support_hessians(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    groups: Mapping[str, Sequence[str]],
) -> Iterator[dict[str, Tensor]]:
    """Per task, ``{label: H_gg}``: the float64 Hessian of the task's support loss (MSE)
    at ``params`` with respect to each group's weights (flattened, in the group's order),
    the other weights held fixed. ``x_support`` and ``y_support`` are ``(tasks, K, 1)``."""
    _check(x_support, y_support, params, groups)
    frozen = {k: v.detach() for k, v in params.items()}
    for xs, ys in zip(x_support, y_support, strict=True):

        def loss_of(sub: dict[str, Tensor], xs=xs, ys=ys) -> Tensor:
            return F.mse_loss(functional_call(model, {**frozen, **sub}, (xs,)), ys)

        yield {
            label: _flat_hessian(loss_of, {n: frozen[n] for n in names}).double()
            for label, names in groups.items()
        }


def top_curvatures(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    groups: Mapping[str, Sequence[str]],
) -> dict[str, Tensor]:
    """Per task, the largest eigenvalue λ_max of each group's support-loss Hessian:
    ``{label: (tasks,) float64 tensor}``. One scalar step α settles iff ``α λ_max < 2``."""
    out: dict[str, list[float]] = {label: [] for label in groups}
    for hessians in support_hessians(model, params, x_support, y_support, groups):
        for label, h in hessians.items():
            out[label].append(torch.linalg.eigvalsh(h)[-1].item())
    return {label: torch.tensor(values, dtype=torch.float64) for label, values in out.items()}


def growth_factors(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x_support: Tensor,
    y_support: Tensor,
    *,
    inner_lr: float | Mapping[str, Tensor],
    groups: Mapping[str, Sequence[str]],
) -> dict[str, Tensor]:
    """Per task, the growth factor of one inner step restricted to each group of weights.

    ``groups`` maps a label to parameter names (e.g. a layer's weight and bias); the factor
    is the largest ``|1 − μ|`` over the eigenvalues μ of ``diag(α) H_gg``, where ``H_gg`` is
    the group's block of the support-loss Hessian (:func:`support_hessians`). Eigenvalues
    that are zero are left out: with K points and more weights than K the Hessian is
    singular, and a step does not move the weights along the directions it cannot see.
    Returns ``{label: (tasks,) tensor}`` (float64). Above 1: repeated steps of that group
    grow without bound near ``params``; below 1: they settle.

    One Hessian per task and group: use tens of tasks for layers with thousands of weights.
    """
    if isinstance(inner_lr, Mapping):
        missing = sorted({n for names in groups.values() for n in names} - set(inner_lr))
        if missing:
            raise ValueError(f"inner_lr has no step sizes for {missing}.")
    elif isinstance(inner_lr, bool) or not isinstance(inner_lr, int | float):
        raise ValueError(f"inner_lr={inner_lr!r} must be a number or a dict of tensors.")
    out: dict[str, list[float]] = {label: [] for label in groups}
    for hessians in support_hessians(model, params, x_support, y_support, groups):
        for label, h in hessians.items():
            if isinstance(inner_lr, Mapping):
                names = groups[label]
                steps = torch.cat([inner_lr[n].detach().flatten() for n in names]).double()
            else:
                steps = torch.full((h.shape[0],), float(inner_lr), dtype=torch.float64)
            moved = torch.linalg.eigvals(steps[:, None] * h)  # μ: the step map is 1 − μ
            moved = moved[moved.abs() > RELATIVE_ZERO * moved.abs().max()]
            out[label].append((1 - moved).abs().max().item() if len(moved) else 1.0)
    return {label: torch.tensor(values, dtype=torch.float64) for label, values in out.items()}
