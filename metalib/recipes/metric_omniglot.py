"""``protonet-``, ``matching-``, ``siamese-`` and ``protomaml-omniglot``: the metric-based family.

One configuration, one training function, one evaluation and one checkpoint format for the
methods of :mod:`metalib.algorithms.protonet`, :mod:`~metalib.algorithms.matching`,
:mod:`~metalib.algorithms.siamese` and :mod:`~metalib.algorithms.protomaml` (which starts
from a ProtoNet checkpoint and keeps its batch-norm statistics). They share the episode
sampler of chapter 05 and the training loop of the earlier chapters. The defaults are
Prototypical Networks' Omniglot recipe (Snell et al. 2017, section 3.1): training episodes
of 60 classes with as many support images per class as at test time and 5 queries, Adam with
β = 0.001 halved every 2,000 episodes, batch norm with running statistics at test time.
Taught in ``notebooks/07_prototypical_networks.ipynb``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checkpoints, checks, runtime, training
from metalib.algorithms import matching, protomaml, protonet, siamese
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
from metalib.models import ConvEmbedding
from metalib.recipes.base import (
    PATIENCE_FLAG,
    Config,
    Flag,
    Run,
    Validation,
    fit,
    load_weights,
    restore_module,
)

METHODS = ("protonet", "matching", "siamese", "protomaml")
RECIPES = {
    "protonet-omniglot": "Prototypical Networks (Snell et al. 2017) on Omniglot",
    "matching-omniglot": "Matching Networks (Vinyals et al. 2016), no full-context embeddings",
    "siamese-omniglot": "Siamese networks (Koch et al. 2015) for one-shot classification",
    "protomaml-omniglot": "first-order ProtoMAML (Triantafillou et al. 2020) from a ProtoNet",
}


@dataclass(frozen=True)
class MetricConfig(Config):
    """Hyperparameters of a metric-based run. Defaults: ProtoNets, 5-way 1-shot tests.

    ``n_way`` is the test episodes' width; training episodes have ``train_way`` classes
    (60 in the paper: wider training episodes help) and the same ``k_shot``.
    """

    method: str = "protonet"
    n_way: int = 5
    k_shot: int = 1
    train_way: int = 60
    k_query: int = 5  # query images per class in training episodes
    meta_steps: int = 20_000  # training episodes (steps of Adam)
    meta_batch_size: int = 1  # episodes per step
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "halving"
    halve_every: int = 2_000
    distance: str = "euclidean"  # protonet: or "cosine"
    scale: float = matching.DEFAULT_SCALE  # matching: cosine multiplier before the softmax
    scheme: str = "vinyals"
    seed: int = 0
    validate_every: int = 500  # steps between validation scores (vinyals only); 0: never
    validation_episodes: int = 200
    patience: int = 0  # checks without a better score before training stops; 0: never
    init: str = ""  # protonet, protomaml: the protonet checkpoint to start from ("": fresh)
    inner_lr: float = 0.01  # protomaml: α, in training and at test
    inner_steps: int = 5  # protomaml: steps on the support set, in training and at test
    first_order: bool = True  # protomaml: fo-Proto-MAML, the paper's

    FLAGS: ClassVar[dict[str, Flag]] = {
        "n_way": Flag("classes per test episode"),
        "k_shot": Flag("support images per class, in training and test episodes"),
        "train_way": Flag("classes per training episode (60, as ProtoNets)"),
        "k_query": Flag("query images per class in training episodes"),
        "meta_steps": Flag("training episodes (steps of Adam)"),
        "meta_batch_size": Flag("episodes per step"),
        "outer_lr": Flag("Adam step size β"),
        "outer_lr_schedule": Flag("β over training", choices=training.SCHEDULES),
        "halve_every": Flag("steps between halvings of β (schedule 'halving')"),
        "distance": Flag(
            "distance to the prototypes", choices=protonet.DISTANCES, methods=("protonet",)
        ),
        "scale": Flag("cosine multiplier before the softmax", methods=("matching",)),
        "scheme": Flag("class split", name="split", choices=splits.SCHEMES),
        "seed": Flag("seed for weights and episode sampling"),
        "validate_every": Flag(
            "steps between accuracy checks on the vinyals validation classes; training keeps "
            "the best step (0: keep the last; the lake split has no validation classes)"
        ),
        "validation_episodes": Flag("test-shaped episodes of the validation classes per check"),
        "patience": PATIENCE_FLAG,
        "init": Flag(
            "ProtoNet checkpoint (name or path) whose embedding and batch-norm statistics "
            "training starts from (e.g. a 1-shot network, to train on 5-shot episodes; '' for a "
            "fresh network)",
            methods=("protonet", "protomaml"),
        ),
        "inner_lr": Flag("inner step size α", methods=("protomaml",)),
        "inner_steps": Flag(
            "inner steps on the support set, in training and at test", methods=("protomaml",)
        ),
        "first_order": Flag("drop the inner loop's second-order terms", methods=("protomaml",)),
    }

    def __post_init__(self) -> None:
        checks.one_of("method", self.method, METHODS)
        minimums = {"n_way": 2, "k_shot": 1, "train_way": 2, "k_query": 1, "meta_batch_size": 1}
        self.check_counts({"meta_steps": 0, "seed": 0, "halve_every": 1, **minimums})
        self.check_counts({"validate_every": 0, "validation_episodes": 2, "patience": 0})
        self.check_counts({"inner_steps": 0})
        checks.positive_number("inner_lr", self.inner_lr)
        if self.init and self.method not in ("protonet", "protomaml"):
            raise ValueError(
                f"init={self.init!r} applies to protonet and protomaml only, not {self.method}."
            )
        training.check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.one_of("distance", self.distance, protonet.DISTANCES)
        checks.positive_number("scale", self.scale)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)

    @property
    def recipe(self) -> str:
        return f"{self.method}-omniglot"

    def model(self) -> nn.Module:
        """A fresh network: the embedding, or for Siamese the embedding plus its pair head."""
        return siamese.SiameseNet() if self.method == "siamese" else ConvEmbedding()


def config(recipe: str, **overrides: Any) -> MetricConfig:
    """The config of ``recipe`` (e.g. ``"matching-omniglot"``) with ``overrides``."""
    return MetricConfig(method=recipe.removesuffix("-omniglot"), **overrides)


def build(config: MetricConfig) -> nn.Module:
    """A fresh network: the embedding, or for Siamese the embedding plus its pair head."""
    return config.model()


def episode_logits(
    model: nn.Module, config: MetricConfig, x_support: Tensor, y_support: Tensor, x_query: Tensor
) -> Tensor:
    """Class scores ``(tasks, n_query, n_way)`` of ``config.method`` for an episode batch."""
    n_way = int(y_support.max()) + 1
    if config.method == "protonet":
        return protonet.episode_logits(
            model, x_support, y_support, x_query, n_way=n_way, distance=config.distance
        )
    if config.method == "matching":
        return matching.episode_logits(
            model, x_support, y_support, x_query, n_way=n_way, scale=config.scale
        )
    if config.method == "protomaml":
        return protomaml.episode_logits(
            protomaml.HeadedEmbedding(model),
            protomaml.theta_of(model),
            x_support,
            y_support,
            x_query,
            n_way=n_way,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
        )
    return siamese.episode_logits(model, x_support, y_support, x_query, n_way=n_way)


def episode_loss(model: nn.Module, config: MetricConfig, batch: episodes.Episodes) -> Tensor:
    """The training loss of an episode batch: cross-entropy, or Siamese pair loss."""
    if config.method == "siamese":
        return siamese.pair_loss(model, *batch)
    scores = episode_logits(model, config, batch.x_support, batch.y_support, batch.x_query)
    return F.cross_entropy(scores.flatten(0, 1), batch.y_query.flatten())


def train(
    config: MetricConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    model: nn.Module | None = None,
    **loop: Any,
) -> Run:
    """Train ``config.method`` on the training classes of ``config.scheme``.

    Args:
        model: a network to train in place (for example to evaluate it from a
            callback); default: a fresh one seeded with ``config.seed``.
        loop: goes to :func:`metalib.recipes.base.fit` (``callback``, ``resume_path``, ...).

    Raises:
        ValueError: if ``train_way`` exceeds the training classes, or ``k_shot +
            k_query`` the 20 drawers.
    """
    dev = runtime.device(device)
    data = omniglot.load() if data is None else data
    classes = splits.class_split(data, scheme=config.scheme, split="train")
    sampler = episodes.EpisodeSampler(
        data,
        classes,
        n_way=config.train_way,
        k_shot=config.k_shot,
        k_query=config.k_query,
        device=dev,
    )
    torch.manual_seed(config.seed)
    model = (build(config) if model is None else model).to(dev)
    if config.init:
        load_protonet_embedding(model, config.init, scheme=config.scheme, option="init")
    # ProtoMAML keeps the batch-norm statistics it starts from: each task adapts alone.
    model.train(config.method != "protomaml")
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        batch = sampler.sample(config.meta_batch_size, generator=generator)
        return episode_loss(model, config, batch)

    params = dict(model.named_parameters())
    validation, held_out = None, None
    if config.validate_every:  # None for a split without validation classes (lake)
        held_out = validation_sampler(
            data, scheme=config.scheme, n_way=config.n_way, k_shot=config.k_shot, device=dev
        )
    if held_out is not None:

        def val_accuracy() -> float:
            accuracy = per_episode_accuracy(
                model,
                config,
                held_out,
                n_episodes=validation_episodes(config.validation_episodes),
                seed=VALIDATION_SEED,
            )
            return float(accuracy.mean())

        validation = Validation(config.validate_every, val_accuracy, patience=config.patience)
    history = fit(
        step_loss, params, config, model=model, generator=generator, validation=validation, **loop
    )
    return Run(config, model.eval(), params, history, dev)


def load_protonet_embedding(
    module: nn.Module, checkpoint: str, *, scheme: str, option: str
) -> None:
    """Load the embedding (weights and batch-norm statistics) of the ProtoNet checkpoint
    ``checkpoint`` (a shipped name or a path) into ``module``, a :class:`ConvEmbedding`.

    ``option`` names the setting that asked for it, for the error messages.

    Raises:
        FileNotFoundError: if there is no such checkpoint.
        ValueError: if it is not a ``protonet-omniglot`` checkpoint of the split ``scheme``.
    """
    blob = checkpoints.load(checkpoints.path_of(checkpoint), recipe="protonet-omniglot")
    trained_on = blob["config"].get("scheme")
    if trained_on != scheme:
        raise ValueError(
            f"{option}={checkpoint!r} was trained on the {trained_on} split, not {scheme}: "
            "start from a ProtoNet of the same split, so no test class was seen in training."
        )
    load_weights(module, blob["state_dict"], "ProtoNet embedding")


@torch.no_grad()
def embed_episode(
    model: nn.Module, episode: episodes.Episodes, n_way: int
) -> tuple[Tensor, Tensor]:
    """Query embeddings ``(tasks, n_query, d)`` and prototypes ``(tasks, n_way, d)`` of a
    batch of episodes, the network in eval mode (chapter 07's pictures of the space); the
    network is left in the mode it was in."""
    mode = model.training
    model.eval()
    try:
        support, query = model(episode.x_support), model(episode.x_query)
    finally:
        model.train(mode)
    return query, protonet.prototypes(support, episode.y_support, n_way)


@torch.no_grad()
def per_episode_accuracy(
    model: nn.Module,
    config: MetricConfig,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = TEST_SEED,
    chunk: int = 50,
) -> Tensor:
    """Query accuracy of each of ``n_episodes`` test episodes, ``(n_episodes,)``.

    The model runs in eval mode (batch norm with its running statistics) on the episodes
    of :func:`accuracy_over_episodes`.
    """
    mode = model.training
    model.eval()
    try:
        return accuracy_over_episodes(
            lambda xs, ys, xq: episode_logits(model, config, xs, ys, xq),
            sampler,
            n_episodes=n_episodes,
            seed=seed,
            chunk=chunk,
        )
    finally:
        model.train(mode)


def score_of(
    model: nn.Module,
    config: MetricConfig,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = TEST_SEED,
) -> Score:
    """Mean test accuracy and its 95% interval over ``n_episodes`` episodes."""
    return score(per_episode_accuracy(model, config, sampler, n_episodes=n_episodes, seed=seed))


EVALUATE_OPTIONS = ("n_way", "k_shot", "episodes")
TEST_EPISODES = 1000  # test episodes in a sidecar's accuracies


def evaluate(
    run: Run,
    *,
    data: omniglot.Omniglot | None = None,
    n_way: int | None = None,
    k_shot: int | None = None,
    episodes: int = TEST_EPISODES,
) -> dict[str, Any]:
    """What ``python -m metalib evaluate`` prints: accuracy over test episodes."""
    config = run.config
    n_way = config.n_way if n_way is None else n_way
    k_shot = config.k_shot if k_shot is None else k_shot
    sampler = evaluation_sampler(
        omniglot.load() if data is None else data,
        scheme=config.scheme,
        n_way=n_way,
        k_shot=k_shot,
        device=run.device,
    )
    result = score_of(run.model, config, sampler, n_episodes=episodes)
    return {
        "n_way": n_way,
        "k_shot": k_shot,
        "split": config.scheme,
        "episodes": episodes,
        "accuracy": {"mean": result.mean, "ci95": result.ci95},
    }


def metrics(
    run: Run, *, data: omniglot.Omniglot | None = None, episodes: int = TEST_EPISODES
) -> dict[str, Any]:
    """The test metrics a sidecar records: accuracy at the trained width, 5- and 20-way."""
    settings = [(n_way, run.config.k_shot) for n_way in sorted({run.config.n_way, 5, 20})]
    data = omniglot.load() if data is None else data
    return {"test_accuracy": accuracies(evaluate, run, settings, data=data, episodes=episodes)}


def state_dict(run: Run) -> dict[str, Tensor]:
    """What a checkpoint keeps: the network's weights and batch-norm statistics."""
    return run.model.state_dict()


def restore(
    config: MetricConfig, state: dict[str, Tensor], device: torch.device
) -> tuple[nn.Module, dict[str, Tensor]]:
    """The network of a checkpoint's ``state``, in eval mode (raises ``ValueError``)."""
    return restore_module(build(config), state, device, f"{config.method} network")
