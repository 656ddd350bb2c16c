"""Model-based (black-box) meta-learning: recipes for networks that *are* the learner.

``cnp-sinusoid`` trains a :class:`~metalib.algorithms.cnp.CNP` (Garnelo et al. 2018) on
the sinusoid tasks of chapters 01-03 and evaluates it on the same 1,000 held-out tasks as
MAML (:func:`metalib.recipes.held_out_tasks`), so the two compare task by task. Each
training step draws a batch of tasks and one context size :math:`k` uniform in
``[k_min, k_max]``; the targets are the :math:`k` context points and ``k_query`` more, as
in the paper (the model should also reproduce what it was told). Taught in
``notebooks/07_model_based.ipynb``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metalib import checkpoints, checks, recipes, runtime
from metalib.algorithms import cnp
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import Callback, History, mean_ci95, train_loop


@dataclass(frozen=True)
class CNPConfig:
    """Hyperparameters of ``cnp-sinusoid``. Network sizes are the paper's 1-D regression."""

    meta_steps: int = 10_000
    meta_batch_size: int = 64
    k_min: int = 1
    k_max: int = 10
    k_query: int = 10
    hidden: int = 128
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"
    seed: int = 0

    def __post_init__(self) -> None:
        minimums = {"meta_batch_size": 1, "k_min": 1, "k_max": 1, "k_query": 1, "hidden": 1}
        for name in ("meta_steps", "seed", *minimums):
            checks.count(name, getattr(self, name), minimums.get(name, 0))
        if self.k_min > self.k_max:
            raise ValueError(f"k_min={self.k_min} exceeds k_max={self.k_max}: swap them.")
        checks.positive_number("outer_lr", self.outer_lr)

    recipe = "cnp-sinusoid"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model(self) -> cnp.CNP:
        return cnp.CNP(hidden=self.hidden)


@dataclass
class TrainedCNP:
    config: CNPConfig
    model: cnp.CNP
    history: History
    device: torch.device


def train_cnp(
    config: CNPConfig,
    *,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> TrainedCNP:
    """Train a fresh CNP by maximising the targets' log-likelihood over random tasks."""
    dev = runtime.device(None if device is None else str(device))
    torch.manual_seed(config.seed)
    model = config.model().to(dev)
    family = SinusoidTasks()
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        k = int(torch.randint(config.k_min, config.k_max + 1, (), generator=generator))
        tasks = family.sample(
            config.meta_batch_size, k_shot=k, k_query=config.k_query, generator=generator
        ).to(dev)
        x_target = torch.cat([tasks.x_support, tasks.x_query], dim=1)  # (tasks, k + q, 1)
        y_target = torch.cat([tasks.y_support, tasks.y_query], dim=1)
        mean, std = model(tasks.x_support, tasks.y_support, x_target)
        return cnp.gaussian_nll(mean, std, y_target)

    history = train_loop(
        step_loss,
        dict(model.named_parameters()),
        meta_steps=config.meta_steps,
        outer_lr=config.outer_lr,
        outer_lr_schedule=config.outer_lr_schedule,
        callback=callback,
        progress=progress,
        description=config.recipe,
    )
    return TrainedCNP(config, model.eval(), history, dev)


class RegressionScore(NamedTuple):
    """Query MSE of the predictive mean and query NLL, each mean and 95% half-width."""

    mse: float
    mse_ci95: float
    nll: float
    nll_ci95: float
    tasks: int

    def to_dict(self) -> dict[str, float | int]:
        return self._asdict()


@torch.no_grad()
def per_task_errors(model: cnp.CNP, tasks: TaskBatch) -> tuple[Tensor, Tensor]:
    """Query MSE and NLL of each task, each ``(tasks,)``."""
    dev = next(model.parameters()).device
    tasks = tasks.to(dev)
    mean, std = model(tasks.x_support, tasks.y_support, tasks.x_query)  # (tasks, m, 1) each
    mse = ((mean - tasks.y_query) ** 2).mean(dim=(1, 2))
    nll = torch.stack([cnp.gaussian_nll(m, s, y) for m, s, y in zip(mean, std, tasks.y_query)])
    return mse.cpu(), nll.cpu()


def evaluate_cnp(model: cnp.CNP, *, k_shot: int = 5, n_tasks: int = 1000) -> RegressionScore:
    """Mean query MSE and NLL over the course's held-out sinusoid tasks (MAML's test set)."""
    checks.count("k_shot", k_shot, 1)
    mse, nll = per_task_errors(model, recipes.held_out_tasks(n_tasks, k_shot=k_shot))
    (mse_mean, mse_ci), (nll_mean, nll_ci) = mean_ci95(mse), mean_ci95(nll)
    return RegressionScore(float(mse_mean), float(mse_ci), float(nll_mean), float(nll_ci), n_tasks)


def save_cnp(
    trained: TrainedCNP, path: str | os.PathLike[str], *, metrics: dict, command: str | None
):
    """Write ``PATH.pt`` and ``PATH.json`` (see :mod:`metalib.checkpoints`)."""
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


def load_cnp(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[CNPConfig, cnp.CNP]:
    """``(config, model)`` from a ``cnp-sinusoid`` checkpoint, in eval mode."""
    blob = checkpoints.load(path, recipe=CNPConfig.recipe)
    known = {f.name for f in dataclasses.fields(CNPConfig)}
    if set(blob["config"]) - known:
        raise ValueError(
            f"checkpoint {path} has unknown CNP settings {sorted(set(blob['config']) - known)}."
        )
    config = CNPConfig(**blob["config"])
    model = config.model()
    model.load_state_dict(blob["state_dict"])
    return config, model.to(device).eval()


__all__ = [
    "CNPConfig",
    "RegressionScore",
    "TrainedCNP",
    "evaluate_cnp",
    "load_cnp",
    "per_task_errors",
    "save_cnp",
    "train_cnp",
]
