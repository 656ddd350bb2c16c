"""The transfer-learning baseline on Omniglot: pretrain a classifier, fine-tune per episode.

``transfer-omniglot`` trains :class:`~metalib.algorithms.transfer.PretrainedClassifier`
on every image of the training classes of a split (rotations included, as for the
meta-learners), in ordinary shuffled batches with no episodes. It is evaluated on exactly
the test episodes of chapters 05 and 06 (:func:`metalib.metric.accuracy_over_episodes`),
by fitting a new head to each support set (or fine-tuning the whole network). Chen et
al. (2019, "A Closer Look at Few-shot Classification") showed that such a baseline,
well trained, is competitive with meta-learners; chapter 08 reports what it does here.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from metalib import checkpoints, checks, metric, runtime
from metalib.algorithms import transfer
from metalib.data import episodes, omniglot, splits
from metalib.metric import Score
from metalib.training import Callback, History, check_outer_lr, mean_ci95, train_network

FINE_TUNE = ("head", "whole")


@dataclass(frozen=True)
class TransferConfig:
    """Hyperparameters of ``transfer-omniglot`` (pretraining, then test-time fitting)."""

    meta_steps: int = 5_000  # steps of Adam on batches of images (no episodes)
    batch_size: int = 256
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "halving"
    halve_every: int = 2_000
    fine_tune: str = "head"  # or "whole": the network too, one episode at a time
    head_steps: int = 100
    head_lr: float = 0.1
    scheme: str = "vinyals"
    seed: int = 0

    def __post_init__(self) -> None:
        minimums = {"batch_size": 1, "halve_every": 1}
        for name in ("meta_steps", "head_steps", "seed", *minimums):
            checks.count(name, getattr(self, name), minimums.get(name, 0))
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.positive_number("head_lr", self.head_lr)
        checks.one_of("fine_tune", self.fine_tune, FINE_TUNE)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)

    recipe = "transfer-omniglot"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainedTransfer:
    config: TransferConfig
    model: transfer.PretrainedClassifier
    history: History
    device: torch.device


def training_images(
    data: omniglot.Omniglot, scheme: str, device: torch.device | str = "cpu"
) -> Tensor:
    """Every image of the training classes, rotations applied: ``(classes, drawers, 28, 28)``."""
    classes = splits.class_split(data, scheme=scheme, split="train")
    return episodes.EpisodeSampler(
        data, classes, n_way=2, k_shot=1, k_query=1, device=device
    ).images


def train_transfer(
    config: TransferConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
) -> TrainedTransfer:
    """Train a classifier over all training classes with cross-entropy on random batches."""
    dev = runtime.device(None if device is None else str(device))
    data = omniglot.load() if data is None else data
    images = training_images(data, config.scheme, dev)  # (classes, drawers, 28, 28) uint8
    n_classes, drawers = images.shape[:2]
    torch.manual_seed(config.seed)
    model = transfer.PretrainedClassifier(n_classes).to(dev).train()
    generator = torch.Generator(device=dev).manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        index = torch.randint(
            n_classes * drawers, (config.batch_size,), generator=generator, device=dev
        )
        x = images.flatten(0, 1)[index].float().div_(255)[:, None]  # (batch, 1, 28, 28)
        return F.cross_entropy(model(x), index // drawers)

    history = train_network(step_loss, model, config, callback=callback, progress=progress)
    return TrainedTransfer(config, model.eval(), history, dev)


def evaluate_transfer(
    model: transfer.PretrainedClassifier,
    config: TransferConfig,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    fine_tune: str | None = None,
) -> Score:
    """Mean accuracy and 95% interval on the course's test episodes after fitting new heads."""
    how = checks.one_of("fine_tune", fine_tune or config.fine_tune, FINE_TUNE)
    n_way = sampler.n_way
    model.eval()

    def scores(x_support: Tensor, y_support: Tensor, x_query: Tensor) -> Tensor:
        if how == "head":
            return transfer.fine_tune_head(
                model.embedding,
                x_support,
                y_support,
                x_query,
                n_way,
                steps=config.head_steps,
                lr=config.head_lr,
            )
        return transfer.fine_tune_whole(
            model.embedding, x_support, y_support, x_query, n_way, head_steps=config.head_steps
        )

    accuracy = metric.accuracy_over_episodes(scores, sampler, n_episodes=n_episodes)
    mean, ci = mean_ci95(accuracy)
    return Score(float(mean), float(ci), n_episodes)


def save_transfer(
    trained: TrainedTransfer, path: str | os.PathLike[str], *, metrics: dict, command: str | None
):
    """Write ``PATH.pt`` and ``PATH.json`` (see :mod:`metalib.checkpoints`).

    Only the embedding is kept: the pretraining head (one row per training class) is of
    no use at test time and would make the file several times larger.
    """
    embedding = trained.model.embedding.state_dict()
    return checkpoints.save_run(
        trained, path, metrics=metrics, command=command, state_dict=embedding
    )


def load_transfer(
    path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> tuple[TransferConfig, transfer.PretrainedClassifier]:
    """``(config, model)`` from a ``transfer-omniglot`` checkpoint: the pretrained embedding
    under a placeholder two-class head (test-time heads replace it)."""
    blob = checkpoints.load(path, recipe=TransferConfig.recipe)
    config = TransferConfig(**blob["config"])
    model = transfer.PretrainedClassifier(2)
    model.embedding.load_state_dict(blob["state_dict"])
    return config, model.to(device).eval()


__all__ = [
    "FINE_TUNE",
    "TrainedTransfer",
    "TransferConfig",
    "evaluate_transfer",
    "load_transfer",
    "save_transfer",
    "train_transfer",
    "training_images",
]
