"""Plots for the course. Every function takes ``ax=None`` and returns the ``Axes``.

Nothing here calls ``plt.show()`` or changes global style; when ``ax`` is None a new
figure is made with ``matplotlib.pyplot.subplots``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from torch import Tensor, nn
from torch.func import functional_call

from metalib.algorithms import maml
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import Curve, History

TRUTH_COLOR = "#c0392b"
SUPPORT_COLOR = "#6c3483"


def _axes(ax: Axes | None) -> Axes:
    return plt.subplots(figsize=(6, 4))[1] if ax is None else ax


def plot_task(
    task: TaskBatch,
    *,
    ax: Axes | None = None,
    index: int = 0,
    show_query: bool = False,
    family: SinusoidTasks | None = None,
    label: str | None = "ground truth",
    color: str = TRUTH_COLOR,
) -> Axes:
    """The true function of task ``index``, its support points and optionally its query."""
    ax = _axes(ax)
    family = family or SinusoidTasks()
    x = family.grid()
    amp, pha = task.amplitude[index : index + 1].cpu(), task.phase[index : index + 1].cpu()
    ax.plot(
        x.squeeze(-1),
        family.function(x.unsqueeze(0), amp, pha)[0].squeeze(-1),
        color=color,
        lw=2,
        label=label,
    )
    ax.scatter(
        task.x_support[index].cpu().squeeze(-1),
        task.y_support[index].cpu().squeeze(-1),
        marker="^",
        s=60,
        color=SUPPORT_COLOR,
        zorder=3,
        label=f"support (K={task.x_support.shape[1]})" if label else None,
    )
    if show_query:
        ax.scatter(
            task.x_query[index].cpu().squeeze(-1),
            task.y_query[index].cpu().squeeze(-1),
            marker=".",
            s=20,
            color="grey",
            zorder=2,
            label="query" if label else None,
        )
    ax.set(xlabel="x", ylabel="y")
    return ax


def plot_adaptation(
    model: nn.Module,
    params: Mapping[str, Tensor],
    task: TaskBatch,
    *,
    ax: Axes | None = None,
    steps: Sequence[int] = (0, 1, 10),
    inner_lr: maml.InnerLr = 0.01,
    adapt_only: Collection[str] | None = None,
    name: str = "MAML",
    cmap: str = "Greens",
    index: int = 0,
) -> Axes:
    """Predictions after each number of inner steps in ``steps`` on task ``index``."""
    ax = _axes(ax)
    plot_task(task, ax=ax, index=index)
    x_plot = SinusoidTasks().grid().to(task.x_support.device)  # (200, 1)
    xs, ys = task.x_support[index], task.y_support[index]
    colors = plt.get_cmap(cmap)
    adapted, done = dict(params), 0
    for i, target in enumerate(sorted(steps)):
        adapted = maml.adapt(
            model,
            adapted,
            xs,
            ys,
            inner_lr=inner_lr,
            inner_steps=target - done,
            adapt_only=adapt_only,
        )
        done = target
        with torch.no_grad():
            y_plot = functional_call(model, adapted, (x_plot,))
        shade = colors(0.35 + 0.6 * i / max(len(steps) - 1, 1))
        ax.plot(
            x_plot.cpu().squeeze(-1),
            y_plot.cpu().squeeze(-1),
            ls="--",
            color=shade,
            label=f"{name}, {target} step{'s' if target != 1 else ''}",
        )
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_curves(
    curves: Mapping[str, Curve],
    *,
    ax: Axes | None = None,
    reference: Mapping[str, Mapping[int, float]] | None = None,
    ylabel: str = "test MSE",
) -> Axes:
    """Mean test loss against inner steps with 95% bands; reference values as markers."""
    ax = _axes(ax)
    for label, curve in curves.items():
        steps = range(len(curve.mean))
        mean, ci = torch.tensor(curve.mean), torch.tensor(curve.ci95)
        (line,) = ax.plot(steps, mean, marker="o", ms=3, label=label)
        ax.fill_between(steps, mean - ci, mean + ci, color=line.get_color(), alpha=0.2)
    for label, values in (reference or {}).items():
        ax.scatter(
            list(values),
            list(values.values()),
            marker="x",
            s=60,
            color="black",
            zorder=4,
            label=label,
        )
    ax.set(xlabel="inner gradient steps", ylabel=ylabel)
    ax.legend(fontsize=8)
    return ax


def plot_history(
    history: History,
    *,
    ax: Axes | None = None,
    window: int = 100,
    label: str = "meta-training loss",
) -> Axes:
    """The training loss per outer step and its moving average over ``window`` steps."""
    ax = _axes(ax)
    losses = torch.tensor(history.losses)
    ax.plot(losses, alpha=0.25, lw=0.5)
    if len(losses) >= window:
        smooth = losses.unfold(0, window, 1).mean(-1)
        ax.plot(range(window - 1, len(losses)), smooth, label=f"{label} ({window}-step mean)")
        ax.legend(fontsize=8)
    ax.set(xlabel="outer step", ylabel="loss", yscale="log")
    return ax
