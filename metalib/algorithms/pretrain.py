"""The transfer baseline of the MAML paper (Finn et al. 2017, section 5.1).

One network is trained by ordinary regression on data pooled from all tasks, then
fine-tuned on a new task's support set with the same gradient steps MAML uses
(:func:`metalib.algorithms.maml.adapt`). Averaged over the task family, the best single
function is close to zero everywhere, so this baseline has little to adapt from.
Taught in ``notebooks/01_sinusoid_tasks.ipynb``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalib.tasks import TaskBatch


def pooled_loss(
    model: nn.Module,
    params: dict[str, Tensor],
    tasks: TaskBatch,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
) -> Tensor:
    """Loss of one network on the support and query points of every task, pooled."""
    x = torch.cat([tasks.x_support, tasks.x_query], dim=1)  # (tasks, k_shot + k_query, 1)
    y = torch.cat([tasks.y_support, tasks.y_query], dim=1)  # (tasks, k_shot + k_query, 1)
    return loss_fn(functional_call(model, params, (x,)), y)
