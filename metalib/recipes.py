"""Named training recipes: a frozen configuration plus the function that trains it.

The sinusoid recipes (``sinusoid-maml``, ``-fomaml``, ``-reptile``, ``-meta-sgd``,
``-anil`` and ``-pretrain``) share the setting of MAML's sinusoid experiment (Finn et al.
2017, section 5.1): a 1-40-40-1 ReLU network, K = 10, inner step 0.01, Adam. The command
line, the notebooks and the benchmarks all train through :func:`train_sinusoid` and load
through :func:`load_learner`, so a checkpoint made by one is what the others see.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metalib import checkpoints, checks, runtime
from metalib.algorithms import maml, meta_sgd, pretrain, reptile
from metalib.models import SinusoidMLP, parameters_of
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import Callback, Curve, History, check_outer_lr, evaluate, train_loop

METHODS = ("maml", "fomaml", "reptile", "meta-sgd", "anil", "pretrain")
# What differs from the shared defaults, per method (see each module for why).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "fomaml": {"first_order": True},
    "reptile": {"inner_steps": 5},
    "anil": {"inner_steps": 5},
}
TEST_SEED = 2017  # test tasks come from their own generator, never from a training seed


@dataclass(frozen=True)
class SinusoidConfig:
    """Hyperparameters of a sinusoid run. The defaults are the shipped checkpoints' recipe.

    It keeps the paper's network, inner step (α = 0.01, one step), K = 10 and Adam, but
    takes 200 tasks per outer step with β = 0.005 for 4,500 steps instead of 25 tasks with
    β = 0.001 for 70,000: under ``vmap`` a larger meta-batch costs almost nothing more per
    step, so about a minute on two CPU cores reaches the paper's test error.
    :meth:`paper` gives the paper's exact setting; :meth:`for_method` a method's defaults.
    """

    method: str = "maml"
    meta_steps: int = 4_500
    meta_batch_size: int = 200
    k_shot: int = 10
    k_query: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 1
    outer_lr: float = 5e-3
    outer_lr_schedule: str = "constant"
    first_order: bool = False
    hidden: tuple[int, ...] = (40, 40)
    seed: int = 0

    def __post_init__(self) -> None:
        checks.one_of("method", self.method, METHODS)
        minimums = {"meta_batch_size": 1, "k_shot": 1, "k_query": 1}
        for name in ("meta_steps", "inner_steps", "seed", *minimums):
            checks.count(name, getattr(self, name), minimums.get(name, 0))
        maml.check_hyperparameters(inner_lr=self.inner_lr, inner_steps=self.inner_steps)
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        if self.method == "fomaml" and not self.first_order:
            raise ValueError("method='fomaml' is first-order by definition: set first_order=True.")
        if self.method in ("reptile", "pretrain") and self.first_order:
            raise ValueError(f"first_order=True has no meaning for method={self.method!r}.")
        if self.method == "reptile" and self.inner_steps < 1:
            raise ValueError("method='reptile' needs inner_steps >= 1.")

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> SinusoidConfig:
        """The recipe of ``method``: shared defaults, the method's own, then ``overrides``."""
        checks.one_of("method", method, METHODS)
        return cls(**{"method": method, **METHOD_DEFAULTS.get(method, {}), **overrides})

    @classmethod
    def paper(cls, method: str = "maml") -> SinusoidConfig:
        """The setting of Finn et al. 2017, §5.1: 70,000 steps of 25 tasks, β = 0.001."""
        return cls.for_method(method, meta_steps=70_000, meta_batch_size=25, outer_lr=1e-3)

    @property
    def recipe(self) -> str:
        return f"sinusoid-{self.method}"

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SinusoidConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown sinusoid config keys {sorted(unknown)}.")
        return cls(**{**data, "hidden": tuple(data.get("hidden", (40, 40)))})


@dataclass
class Learner:
    """What adapts at test time: the network, its step size(s) and what it adapts."""

    model: SinusoidMLP
    config: SinusoidConfig
    inner_lr: float | dict[str, Tensor]
    adapt_only: tuple[str, ...] | None

    @property
    def params(self) -> dict[str, Tensor]:
        return parameters_of(self.model)


@dataclass
class Trained:
    """A trained learner and what training did."""

    learner: Learner
    history: History
    device: torch.device

    @property
    def model(self) -> SinusoidMLP:
        return self.learner.model

    @property
    def config(self) -> SinusoidConfig:
        return self.learner.config


def make_learner(config: SinusoidConfig, device: torch.device) -> Learner:
    """A freshly initialised learner for ``config`` (learned step sizes for Meta-SGD)."""
    torch.manual_seed(config.seed)
    model = SinusoidMLP(hidden=config.hidden).to(device)
    inner_lr: float | dict[str, Tensor] = config.inner_lr
    if config.method == "meta-sgd":
        inner_lr = meta_sgd.init_inner_lr(parameters_of(model), value=config.inner_lr)
    adapt_only = model.head_names() if config.method == "anil" else None
    return Learner(model, config, inner_lr, adapt_only)


def step_loss_fn(learner: Learner, device: torch.device, *, meta_loss_fn=maml.meta_loss):
    """The function ``step -> loss`` that :func:`~metalib.training.train_loop` minimises.

    ``meta_loss_fn`` (MAML-family methods only) is ``maml.meta_loss`` or, for timing the
    reference, ``maml.meta_loss_loop``.
    """
    config, model, params = learner.config, learner.model, learner.params
    family = SinusoidTasks()
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        tasks = family.sample(
            config.meta_batch_size,
            k_shot=config.k_shot,
            k_query=config.k_query,
            generator=generator,
            device=device,
        )
        if config.method == "pretrain":
            return pretrain.pooled_loss(model, params, tasks)
        if config.method == "reptile":
            return reptile.surrogate_loss(
                model, params, tasks, inner_lr=config.inner_lr, inner_steps=config.inner_steps
            )
        return meta_loss_fn(
            model,
            params,
            tasks,
            inner_lr=learner.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
            adapt_only=learner.adapt_only,
        )

    return step_loss


def train_sinusoid(
    config: SinusoidConfig,
    *,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Trained:
    """Train a fresh learner with ``config`` on ``device`` (automatic if None)."""
    dev = runtime.device(None if device is None else str(device))
    learner = make_learner(config, dev)
    trainable = dict(learner.params)
    if isinstance(learner.inner_lr, dict):
        trainable.update(meta_sgd.to_state_refs(learner.inner_lr))
    history = train_loop(
        step_loss_fn(learner, dev),
        trainable,
        meta_steps=config.meta_steps,
        outer_lr=config.outer_lr,
        outer_lr_schedule=config.outer_lr_schedule,
        callback=callback,
        progress=progress,
        description=config.recipe,
    )
    if isinstance(learner.inner_lr, dict):
        meta_sgd.check_inner_lr(learner.inner_lr, learner.params)
    return Trained(learner=learner, history=history, device=dev)


def held_out_tasks(
    n_tasks: int = 1000,
    *,
    k_shot: int = 5,
    k_query: int = 100,
    seed: int = TEST_SEED,
    support_range: tuple[float, float] | None = None,
    query_range: tuple[float, float] | None = None,
) -> TaskBatch:
    """The held-out tasks every evaluation in the course uses (same seed, same tasks)."""
    generator = torch.Generator().manual_seed(seed)
    return SinusoidTasks().sample(
        n_tasks,
        k_shot=k_shot,
        k_query=k_query,
        generator=generator,
        support_range=support_range,
        query_range=query_range,
    )


def evaluate_sinusoid(
    model: SinusoidMLP | Learner,
    *,
    k_shot: int = 5,
    n_tasks: int = 1000,
    inner_lr: float | None = None,
    max_steps: int = 10,
    seed: int = TEST_SEED,
    support_range: tuple[float, float] | None = None,
    query_range: tuple[float, float] | None = None,
) -> Curve:
    """Test MSE (mean, 95% interval) over ``n_tasks`` held-out tasks after 0..max_steps.

    A bare model adapts all its weights with ``inner_lr`` (default 0.01); a
    :class:`Learner` adapts as it was trained (its learned step sizes, its ``adapt_only``)
    unless ``inner_lr`` overrides the step size. ``support_range`` and ``query_range``
    restrict where the support and query points are drawn (the extrapolation demo).
    """
    learner = model if isinstance(model, Learner) else None
    net = learner.model if learner else model
    step = inner_lr if inner_lr is not None else (learner.inner_lr if learner else 0.01)
    tasks = held_out_tasks(
        n_tasks, k_shot=k_shot, seed=seed, support_range=support_range, query_range=query_range
    )
    dev = next(net.parameters()).device
    return evaluate(
        net,
        parameters_of(net),
        tasks.to(dev),
        inner_lr=step,
        max_steps=max_steps,
        adapt_only=learner.adapt_only if learner else None,
    )


def save_trained(
    trained: Trained,
    path: str | os.PathLike[str],
    *,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
) -> tuple[Any, Any]:
    """Write ``trained`` as a checkpoint pair (``PATH.pt``, ``PATH.json``)."""
    state = dict(trained.model.state_dict())
    if isinstance(trained.learner.inner_lr, dict):
        state.update(meta_sgd.to_state(trained.learner.inner_lr))
    return checkpoints.save(
        path,
        recipe=trained.config.recipe,
        config=trained.config.to_dict(),
        state_dict=state,
        metrics=metrics,
        device=runtime.describe_device(trained.device),
        wall_time_s=round(trained.history.seconds, 2),
        command=command,
    )


def load_learner(
    path: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> Learner:
    """A ready learner from any sinusoid checkpoint."""
    blob = checkpoints.load(path)
    if not str(blob["recipe"]).startswith("sinusoid-"):
        raise ValueError(
            f"checkpoint {path} is a {blob['recipe']!r} checkpoint, not a sinusoid one."
        )
    config = SinusoidConfig.from_dict(blob["config"])
    dev = runtime.device(None if device is None else str(device))
    learner = make_learner(config, dev)
    weights, lrs = meta_sgd.from_state(blob["state_dict"])
    try:
        learner.model.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {path} does not fit SinusoidMLP{config.hidden}: {error}"
        ) from error
    if isinstance(learner.inner_lr, dict):
        meta_sgd.check_inner_lr(lrs, learner.params)
        learner.inner_lr = {name: lr.to(dev) for name, lr in lrs.items()}
    elif lrs:
        raise ValueError(f"checkpoint {path} has learned step sizes but recipe {config.recipe}.")
    return learner


def load_sinusoid(
    path: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> tuple[SinusoidMLP, SinusoidConfig]:
    """A ready model (and its config) from a sinusoid checkpoint."""
    learner = load_learner(path, device=device)
    return learner.model, learner.config


def shipped(name: str) -> str:
    """Path stem of a shipped checkpoint, e.g. ``shipped("sinusoid_maml")``."""
    return str(runtime.checkpoint_dir() / name)


def outer_steps_per_second(
    meta_loss_fn,
    config: SinusoidConfig | None = None,
    *,
    seconds: float = 5.0,
    device: torch.device | str | None = None,
) -> float:
    """Outer steps per second of ``meta_loss_fn`` (``maml.meta_loss`` or ``maml.meta_loss_loop``).

    Runs the setting of ``config`` (default: the shipped recipe) for at least ``seconds``
    and three steps, after three warm-up steps: sample a meta-batch, the meta-loss, backward,
    one Adam step. Used by chapter 03 and ``benchmarks/sinusoid_training_speed.py``.
    """
    checks.positive_number("seconds", seconds)
    config = config or SinusoidConfig()
    dev = runtime.device(None if device is None else str(device))
    learner = make_learner(config, dev)
    step_loss = step_loss_fn(learner, dev, meta_loss_fn=meta_loss_fn)
    optimizer = torch.optim.Adam(learner.params.values(), lr=config.outer_lr)

    def step() -> None:
        loss = step_loss(0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        step()
        count += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)
