"""``cnp-sinusoid``: a conditional neural process, a network that *is* the learner.

It trains a :class:`~metalib.algorithms.cnp.CNP` (Garnelo et al. 2018) on the sinusoid
tasks of chapters 01-03 and evaluates it on the same 1,000 held-out tasks as MAML
(:func:`metalib.evaluation.held_out_tasks`), so the two compare task by task. Each
training step draws a batch of tasks and one context size :math:`k` uniform in
``[k_min, k_max]``; the targets are the :math:`k` context points and ``k_query`` more, as
in the paper (the model should also reproduce what it was told). Taught in
``notebooks/08_model_based.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from metalib import checks, runtime, training
from metalib.algorithms import cnp
from metalib.evaluation import held_out_tasks
from metalib.recipes.base import Config, Flag, Run, fit, restore_module
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import mean_ci95

RECIPES = {
    "cnp-sinusoid": "a conditional neural process (Garnelo et al. 2018): no gradient steps at "
    "test time",
}


@dataclass(frozen=True)
class CNPConfig(Config):
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

    FLAGS: ClassVar[dict[str, Flag]] = {
        "meta_steps": Flag("outer steps"),
        "meta_batch_size": Flag("tasks per step"),
        "k_min": Flag("fewest context points of a training task"),
        "k_max": Flag("most context points of a training task"),
        "k_query": Flag("target points beyond the context per training task"),
        "hidden": Flag("width of the encoder and decoder"),
        "outer_lr": Flag("Adam step size β"),
        "outer_lr_schedule": Flag("β over training", choices=training.SCHEDULES),
        "seed": Flag("seed for weights and task sampling"),
    }

    def __post_init__(self) -> None:
        minimums = {"meta_batch_size": 1, "k_min": 1, "k_max": 1, "k_query": 1, "hidden": 1}
        self.check_counts({"meta_steps": 0, "seed": 0, **minimums})
        if self.k_min > self.k_max:
            raise ValueError(f"k_min={self.k_min} exceeds k_max={self.k_max}: swap them.")
        training.check_outer_lr(self.outer_lr, self.outer_lr_schedule)

    recipe = "cnp-sinusoid"

    def model(self) -> cnp.CNP:
        return cnp.CNP(hidden=self.hidden)


def config(recipe: str, **overrides: Any) -> CNPConfig:
    """The config of ``cnp-sinusoid`` with ``overrides``."""
    return CNPConfig(**overrides)


def build(config: CNPConfig) -> cnp.CNP:
    """A fresh CNP of ``config``'s width."""
    return config.model()


def train(
    config: CNPConfig,
    *,
    device: torch.device | str | None = None,
    **loop: Any,
) -> Run:
    """Train a fresh CNP by maximising the targets' log-likelihood over random tasks.

    ``loop`` goes to :func:`metalib.recipes.base.fit` (``callback``, ``resume_path``, ...).
    """
    dev = runtime.device(device)
    torch.manual_seed(config.seed)
    model = build(config).to(dev)
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

    params = dict(model.named_parameters())
    history = fit(step_loss, params, config, model=model, generator=generator, **loop)
    return Run(config, model.eval(), params, history, dev)


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


def score_of(model: cnp.CNP, *, k_shot: int = 5, n_tasks: int = 1000) -> RegressionScore:
    """Mean query MSE and NLL over the course's held-out sinusoid tasks (MAML's test set)."""
    checks.count("k_shot", k_shot, 1)
    mse, nll = per_task_errors(model, held_out_tasks(n_tasks, k_shot=k_shot))
    (mse_mean, mse_ci), (nll_mean, nll_ci) = mean_ci95(mse), mean_ci95(nll)
    return RegressionScore(float(mse_mean), float(mse_ci), float(nll_mean), float(nll_ci), n_tasks)


EVALUATE_OPTIONS = ("k_shot", "tasks")
TEST_EPISODES = None  # tested on sinusoid tasks, not episodes


def evaluate(run: Run, *, k_shot: int = 5, tasks: int = 1000) -> dict[str, Any]:
    """What ``python -m metalib evaluate`` prints: query MSE and NLL, no gradient step."""
    result = score_of(run.model, k_shot=k_shot, n_tasks=tasks)
    return {
        "k_shot": k_shot,
        "tasks": tasks,
        "mse": {"mean": result.mse, "ci95": result.mse_ci95},
        "nll": {"mean": result.nll, "ci95": result.nll_ci95},
    }


def metrics(run: Run) -> dict[str, Any]:
    """The test metrics a sidecar records: with 5 and with 10 context points."""
    return {f"test_k{k}_1000_tasks": score_of(run.model, k_shot=k).to_dict() for k in (5, 10)}


def state_dict(run: Run) -> dict[str, Tensor]:
    """What a checkpoint keeps: the network's weights."""
    return run.model.state_dict()


def restore(
    config: CNPConfig, state: dict[str, Tensor], device: torch.device
) -> tuple[cnp.CNP, dict[str, Tensor]]:
    """The CNP of a checkpoint's ``state``, in eval mode (raises ``ValueError``)."""
    return restore_module(build(config), state, device, f"CNP of width {config.hidden}")
