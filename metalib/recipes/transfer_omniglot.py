"""The transfer-learning baseline on Omniglot: pretrain a classifier, fine-tune per episode.

``transfer-omniglot`` trains :class:`~metalib.algorithms.transfer.PretrainedClassifier`
on every image of the training classes of a split (rotations included, as for the
meta-learners), in ordinary shuffled batches with no episodes. It is evaluated on exactly
the test episodes of chapters 06 and 07 (:func:`metalib.evaluation.accuracy_over_episodes`),
by fitting a new head to each support set (or fine-tuning the whole network). Chen et
al. (2019, "A Closer Look at Few-shot Classification") showed that such a baseline,
well trained, is competitive with meta-learners; chapter 09 reports what it does here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from metalib import checks, runtime, training
from metalib.algorithms import transfer
from metalib.data import episodes, omniglot, splits
from metalib.evaluation import (
    TEST_SEED,
    VALIDATION_SEED,
    Score,
    accuracies,
    accuracy_over_episodes,
    evaluation_sampler,
    score,
    validation_episodes,
    validation_sampler,
)
from metalib.recipes.base import PATIENCE_FLAG, Config, Flag, Run, Validation, fit, load_weights

FINE_TUNE = ("head", "whole")
RECIPES = {
    "transfer-omniglot": "the transfer-learning baseline: pretrain a classifier, fit a new "
    "head per episode",
}
SETTINGS = ((5, 1), (5, 5), (20, 1), (20, 5))  # (n_way, k_shot) a sidecar records


@dataclass(frozen=True)
class TransferConfig(Config):
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
    validate_every: int = 500  # steps between validation scores (vinyals only); 0: never
    validation_episodes: int = 200
    patience: int = 0  # checks without a better score before training stops; 0: never

    FLAGS: ClassVar[dict[str, Flag]] = {
        "meta_steps": Flag("steps of Adam on batches of images"),
        "batch_size": Flag("images per step", name="meta-batch-size"),
        "outer_lr": Flag("Adam step size"),
        "outer_lr_schedule": Flag("step size over training", choices=training.SCHEDULES),
        "halve_every": Flag("steps between halvings of the step size (schedule 'halving')"),
        "fine_tune": Flag(
            "at test time, fit a new head on frozen features or fine-tune the whole network",
            choices=FINE_TUNE,
        ),
        "head_steps": Flag("steps of fitting a new head per test episode"),
        "head_lr": Flag("step size of fitting a new head"),
        "scheme": Flag("class split", name="split", choices=splits.SCHEMES),
        "seed": Flag("seed for weights and batch sampling"),
        "validate_every": Flag(
            "steps between 5-way 1-shot accuracy checks on the vinyals validation classes; "
            "training keeps the best step (0: keep the last; lake has no validation classes)"
        ),
        "validation_episodes": Flag("episodes of the validation classes per check"),
        "patience": PATIENCE_FLAG,
    }

    def __post_init__(self) -> None:
        self.check_counts(
            {"meta_steps": 0, "head_steps": 0, "seed": 0, "batch_size": 1, "halve_every": 1}
        )
        self.check_counts({"validate_every": 0, "validation_episodes": 2, "patience": 0})
        training.check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.positive_number("head_lr", self.head_lr)
        checks.one_of("fine_tune", self.fine_tune, FINE_TUNE)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)

    recipe = "transfer-omniglot"


def config(recipe: str, **overrides: Any) -> TransferConfig:
    """The config of ``transfer-omniglot`` with ``overrides``."""
    return TransferConfig(**overrides)


def build(config: TransferConfig, n_classes: int = 2) -> transfer.PretrainedClassifier:
    """A fresh classifier over ``n_classes`` (at test time new heads replace its head)."""
    return transfer.PretrainedClassifier(n_classes)


def training_images(
    data: omniglot.Omniglot, scheme: str, device: torch.device | str = "cpu"
) -> Tensor:
    """Every image of the training classes, rotations applied: ``(classes, drawers, 28, 28)``."""
    classes = splits.class_split(data, scheme=scheme, split="train")
    return episodes.EpisodeSampler(
        data, classes, n_way=2, k_shot=1, k_query=1, device=device
    ).images


def train(
    config: TransferConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    **loop: Any,
) -> Run:
    """Train a classifier over all training classes with cross-entropy on random batches.

    ``loop`` goes to :func:`metalib.recipes.base.fit` (``callback``, ``resume_path``, ...).
    """
    dev = runtime.device(device)
    data = omniglot.load() if data is None else data
    images = training_images(data, config.scheme, dev)  # (classes, drawers, 28, 28) uint8
    n_classes, drawers = images.shape[:2]
    torch.manual_seed(config.seed)
    model = build(config, n_classes).to(dev).train()
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        index = torch.randint(n_classes * drawers, (config.batch_size,), generator=generator)
        index = index.to(dev)  # (batch,)
        x = episodes.to_unit(images.flatten(0, 1)[index])[:, None]  # (batch, 1, 28, 28)
        return F.cross_entropy(model(x), index // drawers)

    params = dict(model.named_parameters())
    validation, held_out = None, None
    if config.validate_every:  # None for a split without validation classes (lake)
        held_out = validation_sampler(data, scheme=config.scheme, n_way=5, k_shot=1, device=dev)
    if held_out is not None:

        def val_accuracy() -> float:
            found = score_of(
                model,
                config,
                held_out,
                n_episodes=validation_episodes(config.validation_episodes),
                seed=VALIDATION_SEED,
            )
            return found.mean

        validation = Validation(config.validate_every, val_accuracy, patience=config.patience)
    history = fit(
        step_loss, params, config, model=model, generator=generator, validation=validation, **loop
    )
    return Run(config, model.eval(), params, history, dev)


def score_of(
    model: transfer.PretrainedClassifier,
    config: TransferConfig,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    fine_tune: str | None = None,
    seed: int = TEST_SEED,
) -> Score:
    """Mean accuracy and 95% interval on the course's test episodes (or those of ``seed``)
    after fitting new heads; the network runs in eval mode and is left as it was."""
    how = checks.one_of("fine_tune", fine_tune or config.fine_tune, FINE_TUNE)
    n_way = sampler.n_way
    mode = model.training
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

    try:
        return score(accuracy_over_episodes(scores, sampler, n_episodes=n_episodes, seed=seed))
    finally:
        model.train(mode)


EVALUATE_OPTIONS = ("n_way", "k_shot", "episodes", "fine_tune")
TEST_EPISODES = 1000  # test episodes in a sidecar's accuracies


def evaluate(
    run: Run,
    *,
    data: omniglot.Omniglot | None = None,
    n_way: int = 5,
    k_shot: int = 1,
    episodes: int = TEST_EPISODES,
    fine_tune: str | None = None,
) -> dict[str, Any]:
    """What ``python -m metalib evaluate`` prints: accuracy after fitting a head per episode."""
    config = run.config
    sampler = evaluation_sampler(
        omniglot.load() if data is None else data,
        scheme=config.scheme,
        n_way=n_way,
        k_shot=k_shot,
        device=run.device,
    )
    result = score_of(run.model, config, sampler, n_episodes=episodes, fine_tune=fine_tune)
    return {
        "n_way": n_way,
        "k_shot": k_shot,
        "split": config.scheme,
        "fine_tune": fine_tune or config.fine_tune,
        "episodes": episodes,
        "accuracy": {"mean": result.mean, "ci95": result.ci95},
    }


def metrics(
    run: Run, *, data: omniglot.Omniglot | None = None, episodes: int = TEST_EPISODES
) -> dict[str, Any]:
    """The test metrics a sidecar records: 5- and 20-way, 1- and 5-shot."""
    data = omniglot.load() if data is None else data
    return {"test_accuracy": accuracies(evaluate, run, SETTINGS, data=data, episodes=episodes)}


def state_dict(run: Run) -> dict[str, Tensor]:
    """What a checkpoint keeps: the embedding only. The pretraining head (one row per
    training class) is of no use at test time and would make the file several times larger."""
    return run.model.embedding.state_dict()


def restore(
    config: TransferConfig, state: dict[str, Tensor], device: torch.device
) -> tuple[transfer.PretrainedClassifier, dict[str, Tensor]]:
    """The pretrained embedding of ``state`` under a placeholder two-class head."""
    model = build(config)
    load_weights(model.embedding, state, "ConvEmbedding")
    model.to(device).eval()
    return model, dict(model.embedding.named_parameters())
