"""Model-Agnostic Meta-Learning (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400).

Adaptation is a plain function from a parameter dict to a parameter dict:

    adapted = params - inner_lr * ∇ L_support(params)        (repeated inner_steps times)

and the meta-objective is the query loss of the adapted parameters, averaged over a
meta-batch of tasks. Differentiating it through ``adapt`` gives the second-order
meta-gradient ``(I - inner_lr ∇² L_support) ∇ L_query(adapted)``; ``first_order=True``
drops the Hessian term (FOMAML). Taught in ``notebooks/02_maml_sinusoid.ipynb``.

The meta-loss is vectorised over tasks with ``torch.func.vmap``
(:func:`meta_loss`); :func:`meta_loss_loop` is the per-task loop it is tested against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Collection, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metalib import checks
from metalib.tasks import TaskBatch

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]


InnerLr = float | Mapping[str, Tensor]


def check_hyperparameters(*, inner_lr: InnerLr, inner_steps: int) -> None:
    """Raise ``ValueError`` for a non-finite ``inner_lr`` or a negative ``inner_steps``.

    ``inner_lr`` is a number, or (Meta-SGD) a dict of tensors shaped like the parameters.
    """
    if isinstance(inner_lr, Mapping):
        bad = [k for k, v in inner_lr.items() if not isinstance(v, Tensor)]
        if bad or not inner_lr:
            raise ValueError(f"inner_lr must map parameter names to tensors; check {bad}.")
    elif isinstance(inner_lr, bool) or not isinstance(inner_lr, int | float):
        raise ValueError(f"inner_lr={inner_lr!r} must be a finite number.")
    elif not math.isfinite(inner_lr):
        raise ValueError(f"inner_lr={inner_lr!r} must be finite: try 0.01 for sinusoids.")
    checks.count("inner_steps", inner_steps, 0)


def adapted_names(params: Params, adapt_only: Collection[str] | None) -> list[str]:
    """The names of the parameters that adapt: all, or those in ``adapt_only`` (ANIL)."""
    if adapt_only is None:
        return list(params)
    if isinstance(adapt_only, str) or not adapt_only:
        raise ValueError(f"adapt_only={adapt_only!r} must be a non-empty collection of names.")
    unknown = sorted(set(adapt_only) - set(params))
    if unknown:
        raise ValueError(f"adapt_only names {unknown} are not parameters; known: {list(params)}.")
    return [name for name in params if name in adapt_only]


def adapt(
    model: nn.Module,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_lr: InnerLr = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    adapt_only: Collection[str] | None = None,
) -> Params:
    """Adapt ``params`` to one task by ``inner_steps`` steps of gradient descent.

    Works eagerly and under ``torch.func.vmap``. The result stays differentiable with
    respect to ``params`` (second order) unless ``first_order`` is set, in which case each
    inner gradient is treated as a constant.

    Args:
        model: the network, run as ``functional_call(model, params, (x,))``.
        params: parameter dict, e.g. ``dict(model.named_parameters())``.
        x: support inputs, ``(k_shot, ...)``.
        y: support targets, ``(k_shot, ...)``.
        loss_fn: ``loss_fn(prediction, y) -> scalar``.
        inner_lr: α, the inner step size (paper: 0.01 for sinusoids); or a dict of
            per-parameter step-size tensors shaped like the parameters (Meta-SGD).
        inner_steps: number of inner steps; 0 returns ``params`` unchanged.
        first_order: drop second-order terms (FOMAML).
        adapt_only: names of the parameters that adapt; the others keep their values
            (ANIL adapts only the head). None adapts all.

    Returns:
        The adapted parameter dict, with the same keys and shapes as ``params``.
    """
    check_hyperparameters(inner_lr=inner_lr, inner_steps=inner_steps)
    names = adapted_names(params, adapt_only)
    if isinstance(inner_lr, Mapping):
        missing = sorted(set(names) - set(inner_lr))
        if missing:
            raise ValueError(f"inner_lr has no step size for {missing}.")
    step = {n: inner_lr[n] if isinstance(inner_lr, Mapping) else inner_lr for n in names}
    adapted = dict(params)

    def support_loss(fast: Params, fixed: Params) -> Tensor:
        return loss_fn(functional_call(model, {**fixed, **fast}, (x,)), y)

    for _ in range(inner_steps):
        fast = {n: adapted[n] for n in names}
        grads = grad(support_loss)(fast, adapted)
        if first_order:
            grads = {n: g.detach() for n, g in grads.items()}
        adapted = {**adapted, **{n: _descend(fast[n], grads[n], step[n]) for n in names}}
    return adapted


def _descend(value: Tensor, gradient: Tensor, step: float | Tensor) -> Tensor:
    """``value - step * gradient``, in one operation when ``step`` is a number."""
    if isinstance(step, Tensor):
        return value - step * gradient
    return torch.sub(value, gradient, alpha=step)


def task_loss(
    model: nn.Module,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_lr: InnerLr = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    adapt_only: Collection[str] | None = None,
) -> Tensor:
    """Query loss of one task after adapting on its support set (a scalar)."""
    adapted = adapt(
        model,
        params,
        x_support,
        y_support,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        adapt_only=adapt_only,
    )
    return loss_fn(functional_call(model, adapted, (x_query,)), y_query)


def meta_loss(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_lr: InnerLr = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    adapt_only: Collection[str] | None = None,
) -> Tensor:
    """Mean post-adaptation query loss over a meta-batch, vectorised with ``vmap``.

    Args:
        tasks: a batch whose tensors are ``(tasks, k, ...)``.

    Returns:
        A scalar; ``.backward()`` on it gives the MAML meta-gradient in ``params``.
    """
    check_hyperparameters(inner_lr=inner_lr, inner_steps=inner_steps)
    one = functools.partial(
        task_loss,
        model,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        adapt_only=adapt_only,
    )
    losses = vmap(one, in_dims=(None, 0, 0, 0, 0))(params, *tasks.support, *tasks.query)
    return losses.mean()  # losses: (tasks,)


def meta_loss_loop(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_lr: InnerLr = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    adapt_only: Collection[str] | None = None,
) -> Tensor:
    """The same quantity as :func:`meta_loss`, one task at a time (the reference)."""
    one = functools.partial(
        task_loss,
        model,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        adapt_only=adapt_only,
    )
    losses = [
        one(params, tasks.x_support[i], tasks.y_support[i], tasks.x_query[i], tasks.y_query[i])
        for i in range(len(tasks))
    ]
    return torch.stack(losses).mean()


def adapt_batch(
    model: nn.Module,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_lr: InnerLr = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
    adapt_only: Collection[str] | None = None,
) -> Params:
    """:func:`adapt` for a batch of tasks at once: ``x`` and ``y`` are ``(tasks, k, ...)``.

    Returns a dict whose tensors have a leading task dimension.
    """
    check_hyperparameters(inner_lr=inner_lr, inner_steps=inner_steps)
    one = functools.partial(
        adapt,
        model,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
        adapt_only=adapt_only,
    )
    return vmap(one, in_dims=(None, 0, 0))(params, x, y)
