"""The LSTM meta-learner (Ravi & Larochelle, ICLR 2017): learn the update rule itself.

MAML learns where gradient descent starts, Meta-SGD also how long each step is. Ravi and
Larochelle noticed that an LSTM's cell update has the form of a gradient step,

    c_t = f_t ∘ c_{t-1} + i_t ∘ c̃_t,

and made the learner's parameters the cell state: with ``c̃_t = -∇_t`` it reads

    θ_t = f_t ∘ θ_{t-1} − i_t ∘ ∇L_support(θ_{t-1}),

where the input gate ``i_t`` is a learned, per-step, per-weight step size and the forget gate
``f_t`` a learned shrinkage (weight decay when below 1). With ``f_t = 1`` and ``i_t = α`` it is
SGD; the initial cell state ``c_0 = θ_0`` is learned too, as MAML learns it. The gates are
computed by a small network shared by every weight ("coordinate-wise", after Andrychowicz et
al. 2016, "Learning to learn by gradient descent by gradient descent", NeurIPS,
arXiv:1606.04474), so the update rule has a few thousand parameters whatever the learner's
size:

- a first LSTM (``hidden`` units) reads, for each weight, its gradient and the support loss,
  each preprocessed into two numbers (Andrychowicz et al., appendix A);
- each gate is a sigmoid of a linear map of that LSTM's output, the weight's current value
  and the gate's previous pre-activation (the paper's ``[∇_t, L_t, θ_{t-1}, f_{t-1}]``; in the
  reference code, as here, the gradient and loss reach the gates through the first LSTM).

Everything is a function of parameter dicts, so a meta-batch is vectorised with
``torch.func.vmap`` (:func:`meta_loss`) as MAML's is; :func:`meta_loss_loop` is the
per-task reference it is tested against.

Where this departs from the paper, and why:

- **Second order.** The paper treats the gradient and loss fed to the meta-learner as
  constants (its figure 2's dashed lines), which drops MAML's Hessian term; that is the
  default here (``first_order=True``). ``first_order=False`` keeps them, for comparison.
- **Initial gates.** The reference draws the forget bias from U(4, 5) and the input bias from
  U(−5, −4). Here they are set: ``b_f = forget_bias`` and ``b_i = logit(inner_lr)``, so that an
  untrained rule is SGD with MAML's step size up to a shrinkage of ``σ(b_f)`` per step, and
  the comparison with MAML starts from the same update.
- **Batch norm.** The paper's learner keeps batch-norm statistics per episode; the course's
  sinusoid network has none, and its Omniglot network normalises transductively, as for MAML.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from metalib import checks, training
from metalib.tasks import TaskBatch

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]

PREFIX = "update_rule."  # how the rule's tensors are stored beside the weights in a checkpoint
FEATURES = 4  # the preprocessed gradient (2 numbers) and loss (2 numbers) of each weight
PREPROCESS_P = 10.0  # Andrychowicz et al.'s p: inputs below e^-p in size are read linearly


def init_rule(
    hidden: int = 20,
    *,
    inner_lr: float = 0.01,
    forget_bias: float = 5.0,
    generator: torch.Generator | None = None,
) -> Params:
    """The update rule's parameters, trainable leaves.

    Args:
        hidden: units of the coordinate-wise LSTM (the paper: 20).
        inner_lr: the untrained input gate ``σ(b_i)``, the first steps' size.
        forget_bias: ``b_f``; the untrained forget gate is ``σ(b_f)`` (5: 0.9933).
        generator: draws the weights, U(−0.01, 0.01) as in the reference code.
    """
    checks.count("hidden", hidden, 1)
    if isinstance(inner_lr, bool) or not (isinstance(inner_lr, int | float) and 0 < inner_lr < 1):
        raise ValueError(f"inner_lr={inner_lr!r} must lie in (0, 1), e.g. 0.01: it is a sigmoid.")
    checks.finite_number("forget_bias", forget_bias)

    def uniform(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator) * 0.02 - 0.01).requires_grad_()

    gate_inputs = hidden + 2  # the LSTM's output, the weight and the gate's last pre-activation
    return {
        "lstm.weight_x": uniform(FEATURES, 4 * hidden),
        "lstm.weight_h": uniform(hidden, 4 * hidden),
        "lstm.bias": torch.zeros(4 * hidden).requires_grad_(),
        "forget.weight": uniform(gate_inputs),
        "forget.bias": torch.tensor(float(forget_bias)).requires_grad_(),
        "input.weight": uniform(gate_inputs),
        "input.bias": torch.tensor(math.log(inner_lr / (1 - inner_lr))).requires_grad_(),
    }


SHAPES = {  # the tensors of a rule, as functions of its hidden size
    "lstm.weight_x": lambda h: (FEATURES, 4 * h),
    "lstm.weight_h": lambda h: (h, 4 * h),
    "lstm.bias": lambda h: (4 * h,),
    "forget.weight": lambda h: (h + 2,),
    "forget.bias": lambda h: (),
    "input.weight": lambda h: (h + 2,),
    "input.bias": lambda h: (),
}


def hidden_size(rule: Params) -> int:
    """The LSTM's hidden size; raise ``ValueError`` unless ``rule`` is a complete, finite rule."""
    if set(rule) != set(SHAPES):
        raise ValueError(f"the rule's tensors are {sorted(rule)}; expected {sorted(SHAPES)}.")
    hidden = rule["lstm.weight_h"].shape[0]
    for name, shape in SHAPES.items():
        if tuple(rule[name].shape) != shape(hidden):
            raise ValueError(
                f"rule[{name!r}] has shape {tuple(rule[name].shape)}; with {hidden} hidden "
                f"units it must be {shape(hidden)}."
            )
        if not torch.isfinite(rule[name]).all():
            raise ValueError(f"rule[{name!r}] has non-finite entries: lower outer_lr.")
    return hidden


def to_state(rule: Params) -> Params:
    """The rule under checkpoint keys (``update_rule.<name>``)."""
    return {PREFIX + name: value.detach() for name, value in rule.items()}


def to_state_refs(rule: Params) -> Params:
    """The rule's tensors themselves (not copies) under checkpoint keys, for an optimiser."""
    return {PREFIX + name: value for name, value in rule.items()}


def from_state(state: Params) -> tuple[Params, Params]:
    """Split a checkpoint's tensors into ``(weights, rule)``."""
    weights = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    rule = {k.removeprefix(PREFIX): v for k, v in state.items() if k.startswith(PREFIX)}
    return weights, rule


def preprocess(x: Tensor, p: float = PREPROCESS_P) -> Tensor:
    """Two numbers per entry, ``(..., 2)``: ``(log|x| / p, sign x)`` where ``|x| ≥ e^-p``,
    else ``(-1, e^p x)`` (Andrychowicz et al. 2016, appendix A). Gradients, whose sizes span
    many orders of magnitude, become inputs of order one; tiny ones are read linearly."""
    floor = math.exp(-p)
    big = x.abs() >= floor
    log = torch.log(x.abs().clamp_min(floor)) / p  # clamped: no infinite slope at 0
    first = torch.where(big, log, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.stack([first, second], dim=-1)


class State(NamedTuple):
    """The rule's memory for one learner, one row per weight (the parameters flattened in
    order, :func:`flatten`): the LSTM's output and cell ``(n_weights, hidden)``, and the
    gates' last pre-activations ``(n_weights,)``."""

    h: Tensor
    c: Tensor
    forget: Tensor
    input: Tensor


def flatten(tensors: Params) -> Tensor:
    """Every entry of ``tensors``, in order, as one vector: the rule treats weights alike."""
    return torch.cat([t.reshape(-1) for t in tensors.values()])


def unflatten(flat: Tensor, like: Params) -> Params:
    """The inverse of :func:`flatten`: ``flat`` cut and shaped like ``like``'s tensors."""
    pieces = flat.split([t.numel() for t in like.values()])
    return {name: piece.reshape(t.shape) for (name, t), piece in zip(like.items(), pieces)}


def init_state(params: Params, hidden: int) -> State:
    """An empty memory: zeros (the reference code starts the gates' memory at 0 too)."""
    first = next(iter(params.values()))
    n = sum(t.numel() for t in params.values())
    return State(first.new_zeros(n, hidden), first.new_zeros(n, hidden), *first.new_zeros(2, n))


def gates(
    rule: Params, grad: Tensor, loss: Tensor, theta: Tensor, state: State
) -> tuple[Tensor, Tensor, State]:
    """The forget and input gates ``σ(f)``, ``σ(i)`` of every weight, and the new state.

    ``grad`` and ``theta`` are flat ``(n_weights,)``. One step of the coordinate-wise LSTM
    (every weight a row of the same small network), then the two gates.
    """
    loss_features = preprocess(loss.reshape(())).expand(len(theta), 2)
    features = torch.cat([preprocess(grad), loss_features], dim=-1)  # (n_weights, 4)
    pre = features @ rule["lstm.weight_x"] + state.h @ rule["lstm.weight_h"] + rule["lstm.bias"]
    i, f, g, o = pre.chunk(4, dim=-1)
    c = torch.sigmoid(f) * state.c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    f_pre = _gate(rule, "forget", h, theta, state.forget)
    i_pre = _gate(rule, "input", h, theta, state.input)
    return torch.sigmoid(f_pre), torch.sigmoid(i_pre), State(h, c, f_pre, i_pre)


def _gate(rule: Params, kind: str, h: Tensor, theta: Tensor, last: Tensor) -> Tensor:
    """A gate's pre-activation: linear in the LSTM's output, the weight and its last value."""
    inputs = torch.cat([h, theta.unsqueeze(-1), last.unsqueeze(-1)], dim=-1)
    return inputs @ rule[f"{kind}.weight"] + rule[f"{kind}.bias"]


class Rollout(NamedTuple):
    """What :func:`rollout` records: the parameters after 0, 1, ..., S steps, and the
    gates of every step, ``(S, n_weights)`` each, over the weights flattened in order."""

    params: list[Params]
    forget: Tensor
    input: Tensor


def rollout(
    model: nn.Module,
    params: Params,
    rule: Params,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_steps: int = 5,
    first_order: bool = True,
) -> Rollout:
    """``inner_steps`` steps of the learned rule on one task, with every gate it opened.

    Each step is ``θ ← σ(f) ∘ θ − σ(i) ∘ ∇L_support(θ)``. Works eagerly and under ``vmap``;
    the result is differentiable with respect to ``params`` and ``rule``.

    Args:
        first_order: treat each step's gradient and loss as constants, as the paper does.
    """
    checks.count("inner_steps", inner_steps, 0)
    state = init_state(params, rule["lstm.weight_h"].shape[0])
    theta, adapted, path = flatten(params), dict(params), [dict(params)]
    forgets, inputs = [], []

    def support_loss(fast: Params) -> Tensor:
        return loss_fn(functional_call(model, fast, (x,)), y)

    for _ in range(inner_steps):
        grads, loss = grad_and_value(support_loss)(adapted)
        grad = flatten(grads)
        if first_order:
            grad, loss = grad.detach(), loss.detach()
        forget, input, state = gates(rule, grad, loss, theta, state)
        theta = forget * theta - input * grad  # (n_weights,)
        adapted = unflatten(theta, params)
        path.append(adapted)
        forgets.append(forget)
        inputs.append(input)
    empty = theta.new_zeros(0, len(theta))
    stacked = [torch.stack(g) if g else empty for g in (forgets, inputs)]
    return Rollout(path, *stacked)


def adapt(
    model: nn.Module,
    params: Params,
    rule: Params,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_steps: int = 5,
    first_order: bool = True,
    trajectory: bool = False,
) -> Params | list[Params]:
    """Adapt ``params`` to one task with ``inner_steps`` steps of the learned rule
    (:func:`rollout`'s parameters).

    Args:
        first_order: treat each step's gradient and loss as constants, as the paper does.
        trajectory: return the parameters after 0, 1, ..., ``inner_steps`` steps.
    """
    path = rollout(
        model,
        params,
        rule,
        x,
        y,
        loss_fn=loss_fn,
        inner_steps=inner_steps,
        first_order=first_order,
    ).params
    return path if trajectory else path[-1]


def task_loss(
    model: nn.Module,
    params: Params,
    rule: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_steps: int = 5,
    first_order: bool = True,
) -> Tensor:
    """Query loss of one task after the learned rule's steps on its support set."""
    adapted = adapt(
        model,
        params,
        rule,
        x_support,
        y_support,
        loss_fn=loss_fn,
        inner_steps=inner_steps,
        first_order=first_order,
    )
    return loss_fn(functional_call(model, adapted, (x_query,)), y_query)


def meta_loss(
    model: nn.Module,
    params: Params,
    rule: Params,
    tasks: TaskBatch,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_steps: int = 5,
    first_order: bool = True,
) -> Tensor:
    """Mean post-adaptation query loss over a meta-batch, vectorised with ``vmap``;
    ``.backward()`` gives the meta-gradient in both ``params`` (θ₀) and ``rule``."""
    hidden_size(rule)
    one = functools.partial(
        task_loss, model, loss_fn=loss_fn, inner_steps=inner_steps, first_order=first_order
    )
    losses = vmap(one, in_dims=(None, None, 0, 0, 0, 0))(params, rule, *tasks.support, *tasks.query)
    return losses.mean()


def meta_loss_loop(
    model: nn.Module,
    params: Params,
    rule: Params,
    tasks: TaskBatch,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_steps: int = 5,
    first_order: bool = True,
) -> Tensor:
    """The same quantity as :func:`meta_loss`, one task at a time (the reference)."""
    losses = [
        task_loss(
            model,
            params,
            rule,
            tasks.x_support[i],
            tasks.y_support[i],
            tasks.x_query[i],
            tasks.y_query[i],
            loss_fn=loss_fn,
            inner_steps=inner_steps,
            first_order=first_order,
        )
        for i in range(len(tasks))
    ]
    return torch.stack(losses).mean()


def losses_by_step(
    model: nn.Module,
    params: Params,
    rule: Params,
    tasks: TaskBatch,
    *,
    loss_fn: LossFn = F.mse_loss,
    max_steps: int = 10,
    chunk: int = 500,
    metric_fn: LossFn | None = None,
) -> Tensor:
    """Query loss of every task after 0, 1, ..., ``max_steps`` steps of the rule, as
    :func:`metalib.training.losses_by_step` gives for gradient descent.

    The rule keeps a memory across steps, so step ``s`` is the ``s``-th state of one run of
    ``max_steps`` steps (not ``s`` fresh steps).

    Args:
        metric_fn: what to score the query set with (default: ``loss_fn``), e.g.
            :func:`metalib.training.accuracy`; the rule always steps on ``loss_fn``.

    Returns:
        ``(max_steps + 1, tasks)``.
    """
    hidden_size(rule)
    checks.count("max_steps", max_steps, 0)
    frozen = {k: v.detach() for k, v in params.items()}
    fixed = {k: v.detach() for k, v in rule.items()}
    score = loss_fn if metric_fn is None else metric_fn

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        path = adapt(
            model, frozen, fixed, xs, ys, loss_fn=loss_fn, inner_steps=max_steps, trajectory=True
        )
        return torch.stack([score(functional_call(model, p, (xq,)), yq) for p in path])

    return training.by_task(one, tasks, chunk=chunk).T


class Gates(NamedTuple):
    """What the rule does to each tensor of the learner at each step, averaged over its
    entries and over tasks: the step size ``σ(i)`` and the decay ``1 − σ(f)``, each
    ``{tensor name: (inner_steps,)}``."""

    step_size: Params
    decay: Params


def gates_by_tensor(
    model: nn.Module,
    params: Params,
    rule: Params,
    tasks: TaskBatch,
    *,
    loss_fn: LossFn = F.mse_loss,
    inner_steps: int = 5,
) -> Gates:
    """The learned step size and decay of every tensor at every step, over ``tasks``
    (the picture of what the rule learned, chapter 04)."""
    hidden_size(rule)
    frozen = {k: v.detach() for k, v in params.items()}
    fixed = {k: v.detach() for k, v in rule.items()}

    def one(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        run = rollout(model, frozen, fixed, xs, ys, loss_fn=loss_fn, inner_steps=inner_steps)
        return run.forget, run.input

    with torch.no_grad():
        forget, input = vmap(one)(*tasks.support)  # (tasks, inner_steps, n_weights) each
    sizes = [t.numel() for t in params.values()]

    def by_tensor(values: Tensor) -> Params:  # (inner_steps, n_weights) -> name: (inner_steps,)
        return {n: v.mean(-1) for n, v in zip(params, values.split(sizes, dim=-1))}

    return Gates(by_tensor(input.mean(0)), by_tensor(1 - forget.mean(0)))
