"""The metric-based family on Omniglot: Prototypical, Matching and Siamese networks.

One configuration, one training function, one evaluation and one checkpoint format for
the three methods of :mod:`metalib.algorithms.protonet`, :mod:`~metalib.algorithms.matching`
and :mod:`~metalib.algorithms.siamese`. They share the episode sampler of chapter 04 and
the training loop of the earlier chapters. The defaults are Prototypical Networks'
Omniglot recipe (Snell et al. 2017, section 3.1): training episodes of 60 classes with
as many support images per class as at test time and 5 queries, Adam with β = 0.001
halved every 2,000 episodes, batch norm with running statistics at test time. Taught in
``notebooks/06_prototypical_networks.ipynb``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checkpoints, checks, runtime
from metalib.algorithms import matching, protonet, siamese
from metalib.data import episodes, omniglot, splits
from metalib.models import ConvEmbedding
from metalib.training import Callback, History, mean_ci95, train_network

METHODS = ("protonet", "matching", "siamese")
TEST_SEED = 2017  # the same test episodes as chapter 05's MAML evaluation
TEST_K_QUERY = 15  # query images per class in test episodes


@dataclass(frozen=True)
class MetricConfig:
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

    def __post_init__(self) -> None:
        checks.one_of("method", self.method, METHODS)
        minimums = {"n_way": 2, "k_shot": 1, "train_way": 2, "k_query": 1, "meta_batch_size": 1}
        minimums["halve_every"] = 1
        for name in ("meta_steps", "seed", *minimums):
            checks.count(name, getattr(self, name), minimums.get(name, 0))
        checks.positive_number("outer_lr", self.outer_lr)
        checks.one_of("distance", self.distance, protonet.DISTANCES)
        checks.positive_number("scale", self.scale)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)

    @property
    def recipe(self) -> str:
        return f"{self.method}-omniglot"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model(self) -> nn.Module:
        """A fresh network: the embedding, or for Siamese the embedding plus its pair head."""
        return siamese.SiameseNet() if self.method == "siamese" else ConvEmbedding()


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
    return siamese.episode_logits(model, x_support, y_support, x_query, n_way=n_way)


def episode_loss(model: nn.Module, config: MetricConfig, batch: episodes.Episodes) -> Tensor:
    """The training loss of an episode batch: cross-entropy, or Siamese pair loss."""
    if config.method == "siamese":
        return siamese.pair_loss(model, *batch)
    scores = episode_logits(model, config, batch.x_support, batch.y_support, batch.x_query)
    return F.cross_entropy(scores.flatten(0, 1), batch.y_query.flatten())


class TrainedMetric(NamedTuple):
    config: MetricConfig
    model: nn.Module
    history: History
    device: torch.device


def train_metric(
    config: MetricConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    model: nn.Module | None = None,
) -> TrainedMetric:
    """Train ``config.method`` on the training classes of ``config.scheme``.

    Args:
        model: a network to train in place (for example to evaluate it from a
            callback); default: a fresh one seeded with ``config.seed``.

    Raises:
        ValueError: if ``train_way`` exceeds the training classes, or ``k_shot +
            k_query`` the 20 drawers.
    """
    dev = runtime.device(None if device is None else str(device))
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
    model = (config.model() if model is None else model).to(dev)
    model.train()
    generator = torch.Generator(device=dev).manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        batch = sampler.sample(config.meta_batch_size, generator=generator)
        return episode_loss(model, config, batch)

    history = train_network(step_loss, model, config, callback=callback, progress=progress)
    model.eval()
    return TrainedMetric(config, model, history, dev)


@torch.no_grad()
def embed_episode(
    model: nn.Module, episode: episodes.Episodes, n_way: int
) -> tuple[Tensor, Tensor]:
    """Query embeddings ``(tasks, n_query, d)`` and prototypes ``(tasks, n_way, d)`` of a
    batch of episodes, the network in eval mode (chapter 06's pictures of the space)."""
    model.eval()
    support, query = model(episode.x_support), model(episode.x_query)
    return query, protonet.prototypes(support, episode.y_support, n_way)


class Score(NamedTuple):
    """Mean query accuracy over test episodes and its 95% half-width."""

    mean: float
    ci95: float
    episodes: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.ci95, "episodes": self.episodes}


def evaluation_sampler(
    data: omniglot.Omniglot,
    *,
    scheme: str = "vinyals",
    split: str = "test",
    n_way: int = 5,
    k_shot: int = 1,
    device: torch.device | str = "cpu",
) -> episodes.EpisodeSampler:
    """Episodes of ``split`` (default: the test classes) with :data:`TEST_K_QUERY` queries."""
    classes = splits.class_split(data, scheme=scheme, split=split)
    return episodes.EpisodeSampler(
        data, classes, n_way=n_way, k_shot=k_shot, k_query=TEST_K_QUERY, device=device
    )


def accuracy_over_episodes(
    scores_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = TEST_SEED,
    chunk: int = 50,
) -> Tensor:
    """Query accuracy of each of ``n_episodes`` test episodes, ``(n_episodes,)``.

    ``scores_fn(x_support, y_support, x_query)`` returns query scores ``(tasks, n_query,
    n_way)`` for a chunk of episodes. Episodes are drawn with ``seed`` (the same ones for
    every method of the course) and built ``chunk`` at a time.
    """
    checks.count("n_episodes", n_episodes, 2)
    generator = torch.Generator(device=sampler.images.device).manual_seed(seed)
    classes, drawers = sampler.sample_indices(n_episodes, generator=generator)
    out = []
    for lo in range(0, n_episodes, chunk):
        batch = sampler.gather(classes[lo : lo + chunk], drawers[lo : lo + chunk])
        scores = scores_fn(batch.x_support, batch.y_support, batch.x_query)
        out.append((scores.argmax(-1) == batch.y_query).float().mean(-1))  # (chunk,)
    return torch.cat(out).cpu()


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


def evaluate_metric(
    model: nn.Module,
    config: MetricConfig,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = TEST_SEED,
) -> Score:
    """Mean test accuracy and its 95% interval over ``n_episodes`` episodes."""
    accuracy = per_episode_accuracy(model, config, sampler, n_episodes=n_episodes, seed=seed)
    mean, ci = mean_ci95(accuracy)
    return Score(float(mean), float(ci), n_episodes)


def save_metric(trained: TrainedMetric, path, *, metrics: dict, command: str | None):
    """Write ``PATH.pt`` and ``PATH.json`` (see :mod:`metalib.checkpoints`)."""
    return checkpoints.save_run(trained, path, metrics=metrics, command=command)


def is_metric_recipe(recipe: str) -> bool:
    return recipe in {f"{m}-omniglot" for m in METHODS}


def load_metric(path, *, device: torch.device | str = "cpu") -> tuple[MetricConfig, nn.Module]:
    """``(config, model)`` from a checkpoint of :func:`save_metric`, in eval mode.

    Raises:
        FileNotFoundError, ValueError: as :func:`metalib.checkpoints.load`, or if the
            checkpoint is not one of the metric-based recipes.
    """
    blob = checkpoints.load(path)
    if not is_metric_recipe(blob["recipe"]):
        raise ValueError(
            f"checkpoint {path} holds recipe {blob['recipe']!r}, not one of "
            f"{[f'{m}-omniglot' for m in METHODS]}."
        )
    config = MetricConfig(**blob["config"])
    model = config.model()
    if set(blob["state_dict"]) != set(model.state_dict()):
        raise ValueError(f"checkpoint {path} does not hold a {config.method} network.")
    model.load_state_dict(blob["state_dict"])
    return config, model.to(device).eval()


__all__ = [
    "METHODS",
    "MetricConfig",
    "Score",
    "TrainedMetric",
    "accuracy_over_episodes",
    "embed_episode",
    "episode_logits",
    "episode_loss",
    "evaluate_metric",
    "evaluation_sampler",
    "load_metric",
    "per_episode_accuracy",
    "save_metric",
    "train_metric",
]
