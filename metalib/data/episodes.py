"""N-way K-shot episodes, a whole meta-batch at a time, by tensor indexing.

An episode (Vinyals et al. 2016) picks ``n_way`` classes of a split, gives them the
labels ``0..n_way-1`` in a random order, and draws ``k_shot`` support and ``k_query``
query images of each, all distinct. :class:`EpisodeSampler` keeps the split's images as
one uint8 tensor ``(classes, drawers, 28, 28)`` on the chosen device, rotations already
applied, and builds ``tasks`` episodes at once from random indices: no Python loop over
tasks, classes or images, so on a GPU a meta-batch never leaves the device. Taught in
``05_omniglot_episodes``.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch

from metalib import checks
from metalib.data.omniglot import Omniglot
from metalib.data.splits import ClassSplit


class Episodes(NamedTuple):
    """A meta-batch of episodes; the support is grouped by label, then the query."""

    x_support: torch.Tensor  # (tasks, n_way * k_shot, 1, 28, 28) float in [0, 1], ink 1
    y_support: torch.Tensor  # (tasks, n_way * k_shot) int64 in 0..n_way-1
    x_query: torch.Tensor  # (tasks, n_way * k_query, 1, 28, 28)
    y_query: torch.Tensor  # (tasks, n_way * k_query)

    @property
    def support(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_support, self.y_support

    @property
    def query(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x_query, self.y_query

    def __len__(self) -> int:  # the number of tasks, not of fields, as for TaskBatch
        return self.x_support.shape[0]


def _choose(tasks: int, n: int, population: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` distinct integers below ``population`` in random order, for each task.

    Floyd's algorithm (Bentley & Floyd, "A sample of brilliance", CACM 1987), run for all
    tasks at once: ``n`` small steps instead of scoring the whole population, which is
    several times faster for Omniglot's thousands of classes.
    """
    where = generator.device
    chosen = torch.empty(tasks, n, dtype=torch.long, device=where)
    for k, top in enumerate(range(population - n, population)):
        draw = torch.rand(tasks, generator=generator, device=where, dtype=torch.float64)
        draw = (draw * (top + 1)).long().clamp_(max=top)  # uniform on 0..top
        taken = (chosen[:, :k] == draw[:, None]).any(dim=1)
        chosen[:, k] = torch.where(taken, top, draw)
    order = torch.rand(tasks, n, generator=generator, device=where).argsort(dim=1)
    return chosen.gather(1, order)  # (tasks, n): a uniform random subset, shuffled


_UNIT = torch.arange(256, dtype=torch.uint8).float().div_(255)  # byte value → [0, 1]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels as floats in [0, 1], the same bits on every device.

    A lookup in a table made once on the CPU: a GPU divides by a constant as a
    multiplication by its reciprocal, which is off by one unit in the last place for half
    the byte values, so the same episode would differ between a CPU and a GPU.
    """
    return _UNIT.to(images.device)[images.long()]


class EpisodeSampler:
    """Sample N-way K-shot episodes of one class split, held on ``device``.

    Args:
        dataset: from :func:`metalib.data.omniglot.load`.
        classes: from :func:`metalib.data.splits.class_split`.
        n_way: classes per episode (5 or 20 in the papers).
        k_shot: support images per class.
        k_query: query images per class (15 in Prototypical Networks' 5-way training).
        device: where the images live and episodes are built (default: cpu).

    Raises:
        ValueError: if ``n_way`` exceeds the split's classes or ``k_shot + k_query``
            exceeds the 20 drawers.
    """

    def __init__(
        self,
        dataset: Omniglot,
        classes: ClassSplit,
        *,
        n_way: int = 5,
        k_shot: int = 1,
        k_query: int = 15,
        device: torch.device | str = "cpu",
    ) -> None:
        self.classes = classes
        self.device = torch.device(device)
        images = dataset.by_character()[classes.characters]  # (classes, drawers, 28, 28)
        for turns in (1, 2, 3):
            chosen = classes.rotations == turns
            images[chosen] = torch.rot90(images[chosen], turns, dims=(-2, -1))
        self.images = images.to(self.device)
        self._set_shape(n_way, k_shot, k_query)

    def _set_shape(self, n_way: int, k_shot: int, k_query: int) -> None:
        self.n_way = checks.count("n_way", n_way, 2, len(self.classes))
        self.k_shot = checks.count("k_shot", k_shot, 1)
        self.k_query = checks.count("k_query", k_query, 1)
        drawers = self.images.shape[1]
        if k_shot + k_query > drawers:
            raise ValueError(
                f"k_shot + k_query = {k_shot} + {k_query} exceeds the {drawers} "
                "images per class: draw fewer."
            )
        labels = torch.arange(n_way, device=self.device)
        self._y_support = labels.repeat_interleave(k_shot)  # (n_way * k_shot,)
        self._y_query = labels.repeat_interleave(k_query)  # (n_way * k_query,)

    def with_shape(self, *, n_way: int, k_shot: int, k_query: int) -> EpisodeSampler:
        """A sampler of other episode sizes over the same classes, sharing the images."""
        other = copy.copy(self)
        other._set_shape(n_way, k_shot, k_query)
        return other

    def __repr__(self) -> str:
        return (
            f"EpisodeSampler({self.classes.scheme}/{self.classes.split}: "
            f"{len(self.classes)} classes, {self.n_way}-way {self.k_shot}-shot, "
            f"{self.k_query} queries, {self.device})"
        )

    def sample_indices(
        self, tasks: int, *, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random classes and drawers for ``tasks`` episodes, drawn by a CPU ``generator``
        and moved to the sampler's device (the same episodes on every device).

        Returns:
            ``classes`` ``(tasks, n_way)``, indices into the split (label ``j`` of task
            ``t`` is class ``classes[t, j]``), and ``drawers``
            ``(tasks, n_way, k_shot + k_query)``, distinct per class, support first.
        """
        checks.count("tasks", tasks, 1)
        if generator.device.type != "cpu":
            raise ValueError(
                f"the generator is on {generator.device}: draw episodes with torch.Generator() "
                "(CPU), so that a seed names the same episodes on every device."
            )
        classes = _choose(tasks, self.n_way, len(self.classes), generator)  # (tasks, n_way)
        drawers = torch.rand(tasks, self.n_way, self.images.shape[1], generator=generator)
        drawers = drawers.argsort(dim=-1)[..., : self.k_shot + self.k_query]  # (tasks, n_way, k+q)
        return classes.to(self.device), drawers.to(self.device)

    def gather(self, classes: torch.Tensor, drawers: torch.Tensor) -> Episodes:
        """The episodes that :meth:`sample_indices` describes."""
        tasks, n_way = classes.shape
        rows = classes[..., None] * self.images.shape[1] + drawers  # (tasks, n_way, k+q)
        x = self.images.flatten(0, 1).index_select(0, rows.flatten())  # (tasks*n_way*(k+q), 28, 28)
        x = to_unit(x).view(tasks, n_way, -1, 1, *x.shape[1:])  # (tasks, n_way, k+q, 1, 28, 28)
        support = x[:, :, : self.k_shot].reshape(
            tasks, -1, *x.shape[3:]
        )  # (tasks, n_way*k_shot, 1, 28, 28)
        query = x[:, :, self.k_shot :].reshape(
            tasks, -1, *x.shape[3:]
        )  # (tasks, n_way*k_query, 1, 28, 28)
        return Episodes(
            support,
            self._y_support.expand(tasks, -1),
            query,
            self._y_query.expand(tasks, -1),
        )

    def sample(self, tasks: int, *, generator: torch.Generator) -> Episodes:
        """A meta-batch of ``tasks`` episodes drawn with ``generator``."""
        return self.gather(*self.sample_indices(tasks, generator=generator))

    def class_names(self, classes: torch.Tensor, dataset: Omniglot) -> list[str]:
        """``"ALPHABET/characterNN rotDDD"`` for each class index of one episode."""
        names = []
        for c in classes.tolist():
            character = dataset.character_names[int(self.classes.characters[c])]
            names.append(f"{character} rot{90 * int(self.classes.rotations[c]):03d}")
        return names
