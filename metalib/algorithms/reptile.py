"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Adapt to each task with a few plain gradient steps, then move θ towards the adapted
weights:

    θ ← θ + ε · (1/B) Σ_i (φ_i − θ)

No gradient flows through the inner loop. Here the update direction ``θ − mean φ_i`` is
produced as the gradient of a surrogate scalar, so that the course's one training loop
(Adam on a loss) runs Reptile unchanged: Adam then plays the role of ε. The inner loop is
:func:`metalib.algorithms.maml.adapt`, batched over tasks with ``vmap``. As in the paper,
the inner steps use all of a task's points (support and query together). Taught in
``notebooks/03_beyond_maml.ipynb``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib.algorithms import maml
from metalib.tasks import TaskBatch


def direction(
    model: nn.Module,
    params: dict[str, Tensor],
    tasks: TaskBatch,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    inner_lr: float = 0.01,
    inner_steps: int = 5,
) -> dict[str, Tensor]:
    """``θ − mean_i φ_i``: the (negated) Reptile update, one tensor per parameter."""
    maml.check_hyperparameters(inner_lr=inner_lr, inner_steps=inner_steps)
    if inner_steps < 1:
        raise ValueError(f"inner_steps={inner_steps!r}: Reptile needs at least one inner step.")
    x = torch.cat([tasks.x_support, tasks.x_query], dim=1)  # (tasks, k_shot + k_query, 1)
    y = torch.cat([tasks.y_support, tasks.y_query], dim=1)  # (tasks, k_shot + k_query, 1)
    frozen = {name: p.detach() for name, p in params.items()}
    with torch.no_grad():
        adapted = maml.adapt_batch(
            model,
            frozen,
            x,
            y,
            loss_fn=loss_fn,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=True,
        )
    return {name: frozen[name] - adapted[name].mean(0) for name in params}


def surrogate_loss(
    model: nn.Module,
    params: dict[str, Tensor],
    tasks: TaskBatch,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    inner_lr: float = 0.01,
    inner_steps: int = 5,
) -> Tensor:
    """A scalar whose gradient with respect to ``params`` is :func:`direction`.

    ``½ Σ ‖θ − stopgrad(mean φ)‖²``, so ``loss.backward()`` leaves the Reptile direction
    in ``.grad``. Its value is half the squared distance travelled by the inner loop.
    """
    update = direction(
        model, params, tasks, loss_fn=loss_fn, inner_lr=inner_lr, inner_steps=inner_steps
    )
    targets = {name: params[name].detach() - update[name] for name in params}
    return sum(0.5 * (params[n] - targets[n]).pow(2).sum() for n in params)
