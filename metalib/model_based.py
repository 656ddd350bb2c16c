"""Model-based (black-box) meta-learning: recipes for networks that *are* the learner.

``mann-omniglot`` trains a :class:`~metalib.algorithms.mann.MANN` (Santoro et al. 2016)
on sequences of Omniglot episodes drawn by chapter 04's sampler: ``n_way`` classes with
``instances`` drawings each, shown in a random order, each with the previous step's label.
It is evaluated, as in the paper, by the accuracy on the 1st, 2nd, ... sight of a class
over test episodes of the same split.

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
import torch.nn.functional as F
from torch import Tensor

from metalib import checkpoints, checks, metric, recipes, runtime
from metalib.algorithms import cnp, mann
from metalib.data import episodes, omniglot, splits
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import Callback, History, check_outer_lr, mean_ci95, train_network


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
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)

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

    history = train_network(step_loss, model, config, callback=callback, progress=progress)
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
    return checkpoints.save_run(trained, path, metrics=metrics, command=command)


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


@dataclass(frozen=True)
class MANNConfig:
    """Hyperparameters of ``mann-omniglot``. Network sizes are the paper's (section 4.1)."""

    n_way: int = 5
    instances: int = 10  # drawings of each class in a sequence: 50 steps for 5-way
    meta_steps: int = 10_000
    meta_batch_size: int = 16  # sequences per step (the paper: 16)
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"
    hidden: int = 200
    memory_slots: int = 128  # 0: the paper's LSTM baseline
    memory_width: int = 40
    reads: int = 4
    gamma: float = 0.95
    scheme: str = "vinyals"
    seed: int = 0

    def __post_init__(self) -> None:
        minimums = {"n_way": 2, "instances": 1, "meta_batch_size": 1}
        for name in ("meta_steps", "seed", *minimums):
            checks.count(name, getattr(self, name), minimums.get(name, 0))
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)
        self.model()  # the network's own checks (sizes, gamma)

    recipe = "mann-omniglot"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model(self) -> mann.MANN:
        return mann.MANN(
            n_way=self.n_way,
            hidden=self.hidden,
            memory_slots=self.memory_slots,
            memory_width=self.memory_width,
            reads=self.reads,
            gamma=self.gamma,
        )


@dataclass
class TrainedMANN:
    config: MANNConfig
    model: mann.MANN
    history: History
    device: torch.device


def sequence_sampler(
    data: omniglot.Omniglot, config: MANNConfig, *, split: str, device: torch.device | str = "cpu"
) -> episodes.EpisodeSampler:
    """Episodes of ``split`` with ``instances`` drawings per class (and one unused query).

    Raises:
        ValueError: if ``n_way`` exceeds the split's classes or ``instances`` is above 19.
    """
    classes = splits.class_split(data, scheme=config.scheme, split=split)
    return episodes.EpisodeSampler(
        data, classes, n_way=config.n_way, k_shot=config.instances, k_query=1, device=device
    )


def sample_sequences(
    sampler: episodes.EpisodeSampler, tasks: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``tasks`` shuffled sequences: images ``(tasks, steps, 1, 28, 28)`` and labels."""
    batch = sampler.sample(tasks, generator=generator)
    return mann.shuffle_sequences(batch.x_support, batch.y_support, generator)


def train_mann(
    config: MANNConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> TrainedMANN:
    """Train a fresh MANN with cross-entropy at every step of random training sequences."""
    dev = runtime.device(None if device is None else str(device))
    data = omniglot.load() if data is None else data
    sampler = sequence_sampler(data, config, split="train", device=dev)
    torch.manual_seed(config.seed)
    model = config.model().to(dev).train()
    generator = torch.Generator(device=dev).manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        x, y = sample_sequences(sampler, config.meta_batch_size, generator)
        logits = model(x, y)  # (tasks, steps, n_way)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    history = train_network(step_loss, model, config, callback=callback, progress=progress)
    return TrainedMANN(config, model.eval(), history, dev)


class InstanceAccuracy(NamedTuple):
    """Test accuracy on the 1st, 2nd, ... sight of a class, with 95% half-widths."""

    mean: tuple[float, ...]
    ci95: tuple[float, ...]
    episodes: int

    def to_dict(self) -> dict[str, Any]:
        by = {
            str(i + 1): {"mean": m, "ci95": c} for i, (m, c) in enumerate(zip(self.mean, self.ci95))
        }
        return {"by_instance": by, "episodes": self.episodes}


@torch.no_grad()
def evaluate_mann(
    model: mann.MANN,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = metric.TEST_SEED,
    chunk: int = 100,
) -> InstanceAccuracy:
    """Accuracy by instance number over ``n_episodes`` test sequences (the same for every model)."""
    checks.count("n_episodes", n_episodes, 2)
    generator = torch.Generator(device=sampler.images.device).manual_seed(seed)
    mode = model.training
    model.eval()
    per_episode = []
    try:
        for lo in range(0, n_episodes, chunk):
            x, y = sample_sequences(sampler, min(chunk, n_episodes - lo), generator)
            right = (model(x, y).argmax(-1) == y).float()  # (tasks, steps)
            sight = mann.instance_numbers(y) - 1  # (tasks, steps) in 0..instances-1
            totals = right.new_zeros(len(y), sampler.k_shot).scatter_add_(1, sight, right)
            per_episode.append((totals / sampler.n_way).cpu())  # (tasks, instances)
    finally:
        model.train(mode)
    mean, ci = mean_ci95(torch.cat(per_episode))
    return InstanceAccuracy(tuple(mean.tolist()), tuple(ci.tolist()), n_episodes)


def save_mann(
    trained: TrainedMANN, path: str | os.PathLike[str], *, metrics: dict, command: str | None
):
    """Write ``PATH.pt`` and ``PATH.json`` (see :mod:`metalib.checkpoints`)."""
    return checkpoints.save_run(trained, path, metrics=metrics, command=command)


def load_mann(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[MANNConfig, mann.MANN]:
    """``(config, model)`` from a ``mann-omniglot`` checkpoint, in eval mode."""
    blob = checkpoints.load(path, recipe=MANNConfig.recipe)
    config = MANNConfig(**blob["config"])
    model = config.model()
    if set(blob["state_dict"]) != set(model.state_dict()):
        raise ValueError(f"checkpoint {path} does not hold the network its settings describe.")
    model.load_state_dict(blob["state_dict"])
    return config, model.to(device).eval()


__all__ = [
    "CNPConfig",
    "InstanceAccuracy",
    "MANNConfig",
    "RegressionScore",
    "TrainedCNP",
    "TrainedMANN",
    "evaluate_cnp",
    "evaluate_mann",
    "load_cnp",
    "load_mann",
    "per_task_errors",
    "sample_sequences",
    "save_cnp",
    "save_mann",
    "sequence_sampler",
    "train_cnp",
    "train_mann",
]
