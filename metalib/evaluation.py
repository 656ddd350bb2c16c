"""What every evaluation in the course shares: the test seed, the test tasks and episodes,
and a score with its 95% interval.

Every recipe is scored on the same held-out data: 1,000 sinusoid tasks drawn with
:data:`TEST_SEED`, and Omniglot test episodes with :data:`TEST_K_QUERY` queries per class
drawn with the same seed. Indices are always drawn by a CPU generator and only then moved
to the device, so a seed names the same tasks and episodes on every device. Used by the
recipes in :mod:`metalib.recipes`, the widgets and chapter 09.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from metalib import checks, runtime
from metalib.data import episodes, omniglot, splits
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import mean_ci95

TEST_SEED = 2017  # test tasks and episodes come from their own generator, never a training seed
VALIDATION_SEED = 2016  # the fixed validation episodes that training selects its step on
QUICK_VALIDATION_EPISODES = 20  # quick mode's cap on the episodes of one validation check
TEST_K_QUERY = 15  # query images per class in Omniglot test episodes


def test_generator(seed: int = TEST_SEED) -> torch.Generator:
    """A CPU generator seeded with ``seed``: the same draws on every device."""
    return torch.Generator().manual_seed(seed)


def held_out_tasks(
    n_tasks: int = 1000,
    *,
    k_shot: int = 5,
    k_query: int = 100,
    seed: int = TEST_SEED,
    support_range: tuple[float, float] | None = None,
    query_range: tuple[float, float] | None = None,
) -> TaskBatch:
    """The held-out sinusoid tasks every evaluation in the course uses (same seed, same tasks)."""
    return SinusoidTasks().sample(
        n_tasks,
        k_shot=k_shot,
        k_query=k_query,
        generator=test_generator(seed),
        support_range=support_range,
        query_range=query_range,
    )


class Score(NamedTuple):
    """Mean of a per-episode (or per-task) metric and its 95% half-width."""

    mean: float
    ci95: float
    episodes: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.ci95, "episodes": self.episodes}


def score(values: Tensor) -> Score:
    """The :class:`Score` of ``(episodes,)`` values: mean and ``1.96 · sd / √n``."""
    mean, ci = mean_ci95(values)
    return Score(float(mean), float(ci), len(values))


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


def validation_episodes(requested: int) -> int:
    """Episodes per validation check: ``requested``, or at most 20 in quick mode
    (``METALIB_QUICK``), which shrinks every budget."""
    return min(requested, QUICK_VALIDATION_EPISODES) if runtime.quick() else requested


def validation_sampler(
    data: omniglot.Omniglot,
    *,
    scheme: str,
    n_way: int,
    k_shot: int,
    device: torch.device | str = "cpu",
) -> episodes.EpisodeSampler | None:
    """Test-shaped episodes of the validation classes that training selects its step on
    (drawn with :data:`VALIDATION_SEED`), or None for a split without them (``lake``)."""
    if "val" not in splits.SPLITS[scheme]:
        return None
    return evaluation_sampler(
        data, scheme=scheme, split="val", n_way=n_way, k_shot=k_shot, device=device
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
    every method of the course, on every device) and built ``chunk`` at a time.
    """
    checks.count("n_episodes", n_episodes, 2)
    classes, drawers = sampler.sample_indices(n_episodes, generator=test_generator(seed))
    out = []
    for lo in range(0, n_episodes, chunk):
        batch = sampler.gather(classes[lo : lo + chunk], drawers[lo : lo + chunk])
        scores = scores_fn(batch.x_support, batch.y_support, batch.x_query)
        out.append((scores.argmax(-1) == batch.y_query).float().mean(-1))  # (chunk,)
    return torch.cat(out).cpu()


def accuracies(evaluate: Callable, run, settings, **options) -> dict[str, dict]:
    """``{"N-way K-shot": {"mean", "ci95", "episodes"}}``: a family's ``evaluate`` of ``run``
    at each ``(n_way, k_shot)`` of ``settings`` (what an Omniglot sidecar records)."""
    table = {}
    for n_way, k_shot in settings:
        result = evaluate(run, n_way=n_way, k_shot=k_shot, **options)
        table[f"{n_way}-way {k_shot}-shot"] = {**result["accuracy"], "episodes": result["episodes"]}
    return table


__all__ = [
    "TEST_K_QUERY",
    "TEST_SEED",
    "Score",
    "accuracies",
    "accuracy_over_episodes",
    "evaluation_sampler",
    "held_out_tasks",
    "score",
    "test_generator",
]
