"""Named training recipes: a frozen configuration plus the function that trains it.

``sinusoid-maml`` and ``sinusoid-pretrain`` reproduce the sinusoid experiment of MAML
(Finn et al. 2017, section 5.1): a 1-40-40-1 ReLU network, meta-batches of 25 tasks,
inner step 0.01, Adam with 0.001. The command line, the notebooks and the benchmark all
train through :func:`train_sinusoid`, so a checkpoint made by one is what the others see.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from metalib import checkpoints, runtime
from metalib.algorithms import maml, pretrain
from metalib.models import SinusoidMLP, parameters_of
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import Callback, Curve, History, evaluate, train_loop

METHODS = ("maml", "pretrain")
TEST_SEED = 2017  # test tasks come from their own generator, never from a training seed


@dataclass(frozen=True)
class SinusoidConfig:
    """Hyperparameters of a sinusoid run. The defaults are the shipped checkpoints' recipe.

    It keeps the paper's network, inner step (α = 0.01, one step), K = 10 and Adam, but
    takes 200 tasks per outer step with β = 0.005 for 4,500 steps instead of 25 tasks with
    β = 0.001 for 70,000: under ``vmap`` a larger meta-batch costs almost nothing more per
    step, so about a minute on two CPU cores reaches the paper's test error.
    :meth:`paper` gives the paper's exact setting.
    """

    method: str = "maml"
    meta_steps: int = 4_500
    meta_batch_size: int = 200
    k_shot: int = 10
    k_query: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 1
    outer_lr: float = 5e-3
    first_order: bool = False
    hidden: tuple[int, ...] = (40, 40)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r} must be one of {METHODS}.")
        for name in ("meta_steps", "meta_batch_size", "k_shot", "k_query", "inner_steps"):
            value = getattr(self, name)
            minimum = 0 if name in ("meta_steps", "inner_steps") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}={value!r} must be an integer >= {minimum}.")
        maml.check_hyperparameters(inner_lr=self.inner_lr, inner_steps=self.inner_steps)
        if not (isinstance(self.outer_lr, int | float) and 0 < self.outer_lr < float("inf")):
            raise ValueError(f"outer_lr={self.outer_lr!r} must be a finite positive number.")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed!r} must be >= 0.")

    @classmethod
    def paper(cls, method: str = "maml") -> SinusoidConfig:
        """The setting of Finn et al. 2017, §5.1: 70,000 steps of 25 tasks, β = 0.001."""
        return cls(method=method, meta_steps=70_000, meta_batch_size=25, outer_lr=1e-3)

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
class Trained:
    """A trained model and what training did."""

    model: SinusoidMLP
    config: SinusoidConfig
    history: History
    device: torch.device


def step_loss_fn(model: SinusoidMLP, config: SinusoidConfig, device: torch.device):
    """The function ``step -> loss`` that :func:`~metalib.training.train_loop` minimises."""
    family = SinusoidTasks()
    generator = torch.Generator().manual_seed(config.seed)
    params = parameters_of(model)

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
        return maml.meta_loss(
            model,
            params,
            tasks,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
        )

    return step_loss


def train_sinusoid(
    config: SinusoidConfig,
    *,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> Trained:
    """Train a fresh :class:`SinusoidMLP` with ``config`` on ``device`` (automatic if None)."""
    dev = runtime.device(None if device is None else str(device))
    torch.manual_seed(config.seed)
    model = SinusoidMLP(hidden=config.hidden).to(dev)
    history = train_loop(
        step_loss_fn(model, config, dev),
        parameters_of(model),
        meta_steps=config.meta_steps,
        outer_lr=config.outer_lr,
        callback=callback,
        progress=progress,
        description=config.recipe,
    )
    return Trained(model=model, config=config, history=history, device=dev)


def held_out_tasks(
    n_tasks: int = 1000,
    *,
    k_shot: int = 5,
    k_query: int = 100,
    seed: int = TEST_SEED,
    support_range: tuple[float, float] | None = None,
) -> TaskBatch:
    """The held-out tasks every evaluation in the course uses (same seed, same tasks)."""
    generator = torch.Generator().manual_seed(seed)
    return SinusoidTasks().sample(
        n_tasks, k_shot=k_shot, k_query=k_query, generator=generator, support_range=support_range
    )


def evaluate_sinusoid(
    model: SinusoidMLP,
    *,
    k_shot: int = 5,
    n_tasks: int = 1000,
    inner_lr: float = 0.01,
    max_steps: int = 10,
    seed: int = TEST_SEED,
) -> Curve:
    """Test MSE (mean, 95% interval) over ``n_tasks`` held-out tasks after 0..max_steps."""
    tasks = held_out_tasks(n_tasks, k_shot=k_shot, seed=seed)
    dev = next(model.parameters()).device
    return evaluate(
        model, parameters_of(model), tasks.to(dev), inner_lr=inner_lr, max_steps=max_steps
    )


def save_trained(
    trained: Trained,
    path: str | os.PathLike[str],
    *,
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
) -> tuple[Any, Any]:
    """Write ``trained`` as a checkpoint pair (``PATH.pt``, ``PATH.json``)."""
    return checkpoints.save(
        path,
        recipe=trained.config.recipe,
        config=trained.config.to_dict(),
        state_dict=trained.model.state_dict(),
        metrics=metrics,
        device=runtime.describe_device(trained.device),
        wall_time_s=round(trained.history.seconds, 2),
        command=command,
    )


def load_sinusoid(
    path: str | os.PathLike[str], *, device: torch.device | str | None = None
) -> tuple[SinusoidMLP, SinusoidConfig]:
    """A ready model (and its config) from a sinusoid checkpoint."""
    blob = checkpoints.load(path)
    if not str(blob["recipe"]).startswith("sinusoid-"):
        raise ValueError(
            f"checkpoint {path} is a {blob['recipe']!r} checkpoint, not a sinusoid one."
        )
    config = SinusoidConfig.from_dict(blob["config"])
    model = SinusoidMLP(hidden=config.hidden)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as error:
        raise ValueError(
            f"checkpoint {path} does not fit SinusoidMLP{config.hidden}: {error}"
        ) from error
    return model.to(runtime.device(None if device is None else str(device))), config


def shipped(name: str) -> str:
    """Path stem of a shipped checkpoint, e.g. ``shipped("sinusoid_maml")``."""
    return str(runtime.checkpoint_dir() / name)
