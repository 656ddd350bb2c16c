"""Plots for the course. Every function takes ``ax=None`` and returns the ``Axes``.

Nothing here calls ``plt.show()`` or changes global style; when ``ax`` is None a new
figure is made with ``matplotlib.pyplot.subplots``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import matplotlib.pyplot as plt
import torch
from matplotlib.axes import Axes
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn
from torch.func import functional_call
from torchvision.utils import make_grid

from metalib.algorithms import lstm_meta, maml
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
    rule: Mapping[str, Tensor] | None = None,
) -> Axes:
    """Predictions after each number of inner steps in ``steps`` on task ``index``.

    With ``rule`` (an LSTM meta-learner's, :mod:`metalib.algorithms.lstm_meta`) the steps
    are the rule's, one run of ``max(steps)`` steps, and ``inner_lr`` does not apply. The
    task may live on another device than ``params`` (a task drawn on the CPU, a model on a
    GPU): adaptation runs where ``params`` are.
    """
    ax = _axes(ax)
    plot_task(task, ax=ax, index=index)
    where = next(iter(params.values())).device
    x_plot = SinusoidTasks().grid().to(where)  # (200, 1)
    xs, ys = task.x_support[index].to(where), task.y_support[index].to(where)
    colors = plt.get_cmap(cmap)
    path = None
    if rule is not None:
        path = lstm_meta.adapt(
            model, dict(params), dict(rule), xs, ys, inner_steps=max(steps), trajectory=True
        )
    adapted, done = dict(params), 0
    for i, target in enumerate(sorted(steps)):
        if path is not None:
            adapted = path[target]
        else:
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
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
    ax.legend(fontsize=8)
    return ax


def plot_gates(
    values: Mapping[str, Tensor],
    *,
    ax: Axes | None = None,
    ylabel: str = "step size σ(i)",
    mark_step: int | None = None,
    log: bool = True,
) -> Axes:
    """One line per tensor of what a learned rule does at each step (``values``: a field
    of :func:`metalib.algorithms.lstm_meta.gates_by_tensor`): a colour per layer, weights
    solid and biases dotted; ``mark_step`` draws a vertical line at that step."""
    ax = _axes(ax)
    layers = list(dict.fromkeys(name.rsplit(".", 1)[0] for name in values))
    colors = plt.get_cmap("viridis")
    for name, series in values.items():
        layer, kind = name.rsplit(".", 1) if "." in name else (name, "weight")
        shade = colors(layers.index(layer) / max(len(layers) - 1, 1) * 0.85)
        steps = range(1, len(series) + 1)
        style = ":" if kind == "bias" else "-"
        ax.plot(steps, series.detach().cpu(), ls=style, marker="o", ms=3, color=shade, label=name)
    if mark_step is not None:
        ax.axvline(mark_step, color="grey", lw=1, alpha=0.6)
    if log:
        ax.set_yscale("log")
    ax.set(xlabel="inner step", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
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


def plot_images(
    images: Tensor,
    *,
    nrow: int = 10,
    ax: Axes | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
    colors: Sequence[str] | None = None,
) -> Axes:
    """Draw images as one grid (``torchvision.utils.make_grid``), ink dark on white.

    Args:
        images: ``(n, 1, h, w)`` or ``(n, h, w)``, uint8 (ink 255) or float (ink 1).
        nrow: images per row of the grid.
        labels: one short text per image, written in its top-left corner.
        colors: one colour per label (default: all red).
    """
    ax = _axes(ax)
    images = images.detach().cpu()
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (n, 1, h, w)
    if images.dtype == torch.uint8:
        images = images.float() / 255
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"{len(labels)} labels for {len(images)} images: give one per image.")
    pad = 2
    grid = make_grid(images, nrow=nrow, padding=pad, pad_value=0.35)[0].numpy()  # (H, W)
    ax.imshow(grid, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    height, width = images.shape[-2:]
    for i, label in enumerate(labels or ()):
        row, col = divmod(i, nrow)
        x, y = pad + col * (width + pad), pad + row * (height + pad)
        color = colors[i] if colors is not None else "#c0392b"
        ax.text(x + 1, y + 1, label, color=color, fontsize=8, va="top", ha="left", weight="bold")
    ax.set(xticks=[], yticks=[], title=title or "")
    return ax


def plot_episode(
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    y_query: Tensor,
    *,
    axes: Sequence[Axes] | None = None,
    max_query: int = 5,
) -> Sequence[Axes]:
    """One episode as two grids, one row per class: the support, then some queries.

    Args:
        x_support: ``(n_way * k_shot, 1, h, w)``, grouped by label as the sampler gives it.
        y_support: ``(n_way * k_shot,)``.
        x_query, y_query: the same for the query set.
        axes: two axes (support, query); new ones when None.
        max_query: query images shown per class.

    Returns:
        The two axes.
    """
    if axes is None:
        axes = plt.subplots(1, 2, figsize=(9, 4), width_ratios=(1, 1.4))[1]
    n_way = int(y_support.max()) + 1
    k_shot = len(y_support) // n_way
    k_query = len(y_query) // n_way
    shown = min(k_query, max_query)
    keep = torch.arange(len(y_query)).view(n_way, k_query)[:, :shown].flatten()
    plot_images(
        x_support,
        nrow=k_shot,
        ax=axes[0],
        labels=[str(int(y)) for y in y_support],
        title=f"support: {n_way}-way {k_shot}-shot",
    )
    plot_images(
        x_query[keep],
        nrow=shown,
        ax=axes[1],
        labels=[str(int(y)) for y in y_query[keep]],
        title=f"query: {shown} of {k_query} per class",
    )
    return axes


RIGHT_COLOR, WRONG_COLOR = "#1e8449", "#c0392b"


def plot_predictions(
    x_query: Tensor,
    y_query: Tensor,
    predicted: Tensor,
    *,
    nrow: int,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Query images labelled with their predicted class: green if right, red if wrong."""
    right = (predicted == y_query).tolist()
    return plot_images(
        x_query,
        nrow=nrow,
        ax=ax,
        labels=[str(int(p)) for p in predicted],
        colors=[RIGHT_COLOR if r else WRONG_COLOR for r in right],
        title=title,
    )


def pca_2d(points: Tensor) -> Tensor:
    """Project ``(n, dim)`` points on their first two principal components: ``(n, 2)``."""
    centred = points - points.mean(dim=0)  # (n, dim)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)  # v: (min(n, dim), dim)
    return centred @ v[:2].T  # (n, 2)


def plot_embedding(
    query_embeddings: Tensor,
    y_query: Tensor,
    prototypes: Tensor,
    *,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """Queries (dots) and prototypes (stars) of one episode in a 2-D PCA projection.

    Args:
        query_embeddings: ``(n_query, dim)``; y_query ``(n_query,)`` labels ``0..n_way-1``.
        prototypes: ``(n_way, dim)``, row ``k`` the prototype of label ``k``.

    The projection is fitted on queries and prototypes together, so both share the axes.
    """
    ax = _axes(ax)
    n_way = len(prototypes)
    flat = pca_2d(torch.cat([query_embeddings, prototypes]).detach().float().cpu())
    queries, protos = flat[: len(query_embeddings)], flat[len(query_embeddings) :]
    colors = plt.get_cmap("tab10" if n_way <= 10 else "tab20")
    labels = y_query.detach().cpu()
    for k in range(n_way):
        mine = queries[labels == k]
        ax.scatter(mine[:, 0], mine[:, 1], s=14, color=colors(k % colors.N), alpha=0.7)
        ax.scatter(
            protos[k, 0],
            protos[k, 1],
            s=220,
            marker="*",
            color=colors(k % colors.N),
            edgecolor="black",
            linewidth=1.0,
            label=f"prototype {k}" if n_way <= 5 else None,
        )
    ax.set(xticks=[], yticks=[], xlabel="PC 1", ylabel="PC 2", title=title or "")
    if n_way <= 5:
        ax.legend(fontsize=7, loc="best")
    return ax


def plot_architecture(
    stages: Sequence[str],
    *,
    ax: Axes | None = None,
    inputs: Mapping[int, str] | None = None,
    title: str | None = None,
) -> Axes:
    """A model as a picture: boxes left to right, one per stage, joined by arrows.

    Args:
        stages: the text of each box, in the order data flows through them.
        inputs: ``{i: text}``: an extra input drawn above stage ``i`` with an arrow into it.
        title: drawn above the picture.
    """
    if not stages:
        raise ValueError("stages is empty: give the text of at least one box.")
    extra = dict(inputs or {})
    if any(not 0 <= i < len(stages) for i in extra):
        raise ValueError(f"inputs {sorted(extra)} must index stages 0..{len(stages) - 1}.")
    ax = _axes(ax)
    box = {"boxstyle": "round,pad=0.5", "fc": "#eaf2f8", "ec": "#1f618d"}
    arrow = {"arrowstyle": "->", "color": "#1f618d", "lw": 1.5}
    for i, text in enumerate(stages):
        ax.text(i, 0, text, ha="center", va="center", fontsize=9, bbox=box)
        if i:
            ax.annotate("", xy=(i - 0.3, 0), xytext=(i - 0.7, 0), arrowprops=arrow)
    for i, text in extra.items():
        ax.text(i, 0.8, text, ha="center", va="center", fontsize=9, bbox={**box, "fc": "white"})
        ax.annotate("", xy=(i, 0.3), xytext=(i, 0.6), arrowprops=arrow)
    ax.set(xlim=(-0.55, len(stages) - 0.45), ylim=(-0.5, 1.1))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax


def plot_cnp_prediction(
    model: nn.Module,
    task: TaskBatch,
    *,
    ax: Axes | None = None,
    index: int = 0,
    label: str = "CNP",
    color: str = "#1f618d",
) -> Axes:
    """A CNP's predictive mean and ±2σ band on task ``index``, its truth and support points.

    ``model(x_support, y_support, x_query)`` returns ``(mean, std)``, as
    :class:`metalib.algorithms.cnp.CNP` does.
    """
    ax = _axes(ax)
    plot_task(task, ax=ax, index=index)
    device = next(model.parameters()).device
    x_plot = SinusoidTasks().grid().to(device)[None]  # (1, 200, 1)
    support = [t[index : index + 1].to(device) for t in task.support]  # (1, k, 1) each
    with torch.no_grad():
        mean, std = model(*support, x_plot)  # (1, 200, 1) each
    x, mean, std = (t[0].squeeze(-1).cpu() for t in (x_plot, mean, std))
    ax.plot(x, mean, ls="--", color=color, label=f"{label} mean")
    ax.fill_between(x, mean - 2 * std, mean + 2 * std, color=color, alpha=0.2, label="± 2σ")
    ax.legend(fontsize=8, loc="lower left")
    return ax


def plot_instance_accuracy(
    results: Mapping[str, object],
    *,
    ax: Axes | None = None,
    reference: Mapping[str, Sequence[float]] | None = None,
    chance: float | None = None,
) -> Axes:
    """Accuracy on the 1st, 2nd, ... sight of a class (Santoro et al. 2016, Table 1).

    Args:
        results: ``{label: r}`` where ``r.mean`` and ``r.ci95`` hold one value per
            instance (as :class:`metalib.recipes.mann_omniglot.InstanceAccuracy` does).
        reference: ``{label: {instance: accuracy}}`` drawn as dashed lines with markers
            (a paper's values).
        chance: a horizontal line at this accuracy (``1 / n_way``).
    """
    ax = _axes(ax)
    for label, result in results.items():
        mean, ci = torch.tensor(result.mean), torch.tensor(result.ci95)
        sights = range(1, len(mean) + 1)
        (line,) = ax.plot(sights, mean, marker="o", ms=3, label=label)
        ax.fill_between(sights, mean - ci, mean + ci, color=line.get_color(), alpha=0.2)
    styles = ("x--", "+-.", "s:", "^--")  # a paper's values: black, one style per line
    for (label, values), style in zip((reference or {}).items(), styles, strict=False):
        ax.plot(
            list(values),
            list(values.values()),
            style,
            color="black",
            alpha=0.6,
            mfc="none",
            label=label,
        )
    if chance is not None:
        ax.axhline(chance, color="grey", lw=1, ls=":", label="chance")
    ax.set(xlabel="instance (how many times the class has been shown)", ylabel="accuracy")
    ax.set(ylim=(0, 1.02))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))  # off the curves
    return ax
