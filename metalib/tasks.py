"""Task families. Here: sinusoid regression, as in MAML (Finn et al. 2017, section 5.1).

Each task is ``y = amplitude * sin(x - phase)`` with amplitude ~ U[0.1, 5.0],
phase ~ U[0, π] and x ~ U[-5, 5]. A task gives ``k_shot`` support points to adapt on and
``k_query`` query points to measure the adapted model. Taught in
``notebooks/01_sinusoid_tasks.ipynb``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from metalib import checks


class TaskBatch(NamedTuple):
    """A batch of regression tasks; index 0 of every tensor is the task.

    ``task.support`` is ``(x_support, y_support)`` and ``task.query`` is
    ``(x_query, y_query)``.
    """

    x_support: Tensor  # (tasks, k_shot, 1)
    y_support: Tensor  # (tasks, k_shot, 1)
    x_query: Tensor  # (tasks, k_query, 1)
    y_query: Tensor  # (tasks, k_query, 1)
    amplitude: Tensor  # (tasks,)
    phase: Tensor  # (tasks,)

    @property
    def support(self) -> tuple[Tensor, Tensor]:
        return self.x_support, self.y_support

    @property
    def query(self) -> tuple[Tensor, Tensor]:
        return self.x_query, self.y_query

    def __len__(self) -> int:  # the number of tasks, not of fields
        return self.x_support.shape[0]

    def task(self, index: int) -> TaskBatch:
        """The task at ``index``, kept as a batch of one."""
        return TaskBatch(*(t[index : index + 1] for t in self))

    def to(self, device: torch.device | str) -> TaskBatch:
        return TaskBatch(*(t.to(device) for t in self))


def _check_range(name: str, value: tuple[float, float]) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        raise ValueError(f"{name}={value!r} must be a finite (low, high) pair with low <= high.")
    return low, high


@dataclass(frozen=True)
class SinusoidTasks:
    """The sinusoid task family with the MAML paper's ranges as defaults.

    Example:
        >>> family = SinusoidTasks()
        >>> tasks = family.sample(25, k_shot=5, k_query=10, generator=torch.Generator())
        >>> tasks.x_support.shape
        torch.Size([25, 5, 1])
    """

    amplitude_range: tuple[float, float] = (0.1, 5.0)
    phase_range: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    def __post_init__(self) -> None:
        _check_range("amplitude_range", self.amplitude_range)
        _check_range("phase_range", self.phase_range)
        _check_range("x_range", self.x_range)

    @staticmethod
    def function(x: Tensor, amplitude: Tensor, phase: Tensor) -> Tensor:
        """``amplitude * sin(x - phase)``, broadcasting ``(tasks,)`` over ``(tasks, n, 1)``."""
        return amplitude.view(-1, 1, 1) * torch.sin(x - phase.view(-1, 1, 1))

    def sample(
        self,
        n_tasks: int,
        *,
        k_shot: int,
        k_query: int,
        generator: torch.Generator,
        support_range: tuple[float, float] | None = None,
        query_range: tuple[float, float] | None = None,
        amplitude: float | Tensor | None = None,
        phase: float | Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> TaskBatch:
        """Draw ``n_tasks`` tasks with ``k_shot`` support and ``k_query`` query points each.

        Args:
            n_tasks: number of tasks in the batch.
            k_shot: support points per task (what the learner adapts on).
            k_query: query points per task (what the adapted learner is scored on).
            generator: the source of randomness; the same seed gives the same tasks.
            support_range: draw support x only from this sub-range of ``x_range`` (the
                paper's extrapolation demo).
            query_range: likewise for the query x (default: the full ``x_range``).
            amplitude, phase: fix these instead of sampling them (for plots and widgets).
            device: where the returned tensors live (sampling itself is on the CPU).

        Returns:
            A :class:`TaskBatch` with x and y of shape ``(n_tasks, k, 1)``.
        """
        checks.count("n_tasks", n_tasks, 1)
        checks.count("k_shot", k_shot, 1)
        checks.count("k_query", k_query, 1)
        if not isinstance(generator, torch.Generator):
            raise ValueError(f"generator={generator!r} must be a torch.Generator.")
        if generator.device.type != "cpu":
            raise ValueError(
                f"the generator is on {generator.device}: draw tasks with torch.Generator() "
                "(CPU), so that a seed names the same tasks on every device."
            )
        s_low, s_high = self._sub_range("support_range", support_range)
        q_low, q_high = self._sub_range("query_range", query_range)

        def uniform(shape: tuple[int, ...], low: float, high: float) -> Tensor:
            return low + (high - low) * torch.rand(shape, generator=generator)

        amp = uniform((n_tasks,), *self.amplitude_range)  # (tasks,)
        pha = uniform((n_tasks,), *self.phase_range)  # (tasks,)
        if amplitude is not None:
            amp = torch.as_tensor(amplitude, dtype=torch.float32).expand(n_tasks).clone()
        if phase is not None:
            pha = torch.as_tensor(phase, dtype=torch.float32).expand(n_tasks).clone()
        x_support = uniform((n_tasks, k_shot, 1), s_low, s_high)  # (tasks, k_shot, 1)
        x_query = uniform((n_tasks, k_query, 1), q_low, q_high)  # (tasks, k_query, 1)
        batch = TaskBatch(
            x_support,
            self.function(x_support, amp, pha),
            x_query,
            self.function(x_query, amp, pha),
            amp,
            pha,
        )
        return batch if device is None else batch.to(device)

    def _sub_range(self, name: str, value: tuple[float, float] | None) -> tuple[float, float]:
        """``value`` checked to lie inside ``x_range`` (``x_range`` itself when None)."""
        if value is None:
            return self.x_range
        low, high = _check_range(name, value)
        if low < self.x_range[0] or high > self.x_range[1]:
            raise ValueError(f"{name}={value!r} must lie inside x_range={self.x_range!r}.")
        return low, high

    def grid(self, n: int = 200) -> Tensor:
        """``n`` evenly spaced x values over ``x_range``, shaped ``(n, 1)`` for plotting."""
        return torch.linspace(*self.x_range, checks.count("n", n, 2)).unsqueeze(-1)
