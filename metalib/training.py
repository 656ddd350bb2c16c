"""The meta-training loop and evaluation with 95% confidence intervals.

One loop serves every method: it is given a function ``step_loss(step) -> scalar`` that
samples a meta-batch and returns the loss to minimise, and the parameter dict to update
with Adam. Evaluation adapts to held-out tasks with :func:`metalib.algorithms.maml.adapt`,
the same function used in training, and reports the query loss after each inner step.
Used by ``notebooks/02_maml_sinusoid.ipynb`` and the command line.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap
from tqdm import tqdm

from metalib import checks, runtime
from metalib.algorithms import maml
from metalib.tasks import TaskBatch

Params = dict[str, Tensor]
# A callback sees (step, loss) after every outer step; returning True stops training.
Callback = Callable[[int, float], bool | None]
DIVERGED = 1e3  # a per-task MSE above this (on tasks whose targets are within ±5) diverged


@dataclass
class History:
    """What a training run did: one loss per outer step, and how long it took."""

    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    # Validation's patience ran out (``recipes.base.Validation``): training ended before
    # ``meta_steps`` because its score had stopped improving; the run is complete.
    converged: bool = False
    # Model selection (``recipes.base.Validation``): ``[step, score]`` pairs, and the step
    # kept with its score, e.g. ``{"step": 1500, "val_accuracy": 0.97}``.
    validation: list[list[float]] = field(default_factory=list)
    selected: dict[str, float] | None = None
    # Where the steps ran, in order: ``[device, steps]`` pairs (``runtime.describe_device``),
    # one per stretch on the same device; a run resumed elsewhere has several.
    parts: list[list] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.losses)


SCHEDULES = ("constant", "cosine", "halving")


def merge_parts(parts: list[list]) -> list[list]:
    """``[device, steps]`` pairs with neighbours on the same device joined, empty ones dropped."""
    merged: list[list] = []
    for device, steps in parts:
        if steps <= 0:
            continue
        if merged and merged[-1][0] == device:
            merged[-1][1] += steps
        else:
            merged.append([device, steps])
    return merged


def check_outer_lr(outer_lr: float, outer_lr_schedule: str) -> None:
    """Raise ``ValueError`` unless β is finite and positive and the schedule is known."""
    checks.positive_number("outer_lr", outer_lr)
    checks.one_of("outer_lr_schedule", outer_lr_schedule, SCHEDULES)


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython is then imported already; nothing is imported)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell is not None and "IPKernelApp" in shell.config


class NotebookLine:
    """A file for ``tqdm`` that keeps its bar in one notebook output, updated in place.

    tqdm's notebook widget is saved as it was first drawn, so a saved notebook, the book
    and GitHub show every finished run at 0%. This plain-text bar is saved as it ended.
    """

    encoding = "utf-8"  # tqdm then draws its bar with block characters

    def __init__(self) -> None:
        from IPython.display import display

        self.handle = display({"text/plain": ""}, raw=True, display_id=True)

    def write(self, text: str) -> None:
        line = text.rsplit("\r", 1)[-1].rstrip()
        if line:
            self.handle.update({"text/plain": line}, raw=True)

    def flush(self) -> None:
        pass


def train_loop(
    step_loss: Callable[[int], Tensor],
    params: Params,
    *,
    meta_steps: int,
    outer_lr: float = 1e-3,
    outer_lr_schedule: str = "constant",
    callback: Callback | None = None,
    progress: bool = True,
    description: str = "meta-training",
    resume: dict | None = None,
    save_state: Callable[[dict], None] | None = None,
    save_every: int = 200,
    halve_every: int = 2_000,
    after_step: Callable[[int], None] | None = None,
    max_grad_norm: float = 0.0,
) -> History:
    """Minimise ``step_loss`` over ``meta_steps`` outer steps of Adam on ``params``.

    Args:
        step_loss: returns the scalar loss of outer step ``step`` (sampling its own batch).
        params: leaf tensors with ``requires_grad=True``, updated in place.
        meta_steps: number of outer steps.
        outer_lr: β, Adam's learning rate (paper: 0.001).
        outer_lr_schedule: ``"constant"`` (the paper) or ``"cosine"``: β decays from
            ``outer_lr`` to 0 over ``meta_steps`` along half a cosine (Loshchilov & Hutter,
            "SGDR", ICLR 2017), which reaches a lower loss in a fixed number of steps;
            ``"halving"``: β halves every ``halve_every`` steps (Prototypical Networks).
        callback: called as ``callback(step, loss)`` after each step; True stops training.
        progress: show a ``tqdm`` progress bar.
        resume: a state given earlier to ``save_state``: training continues from its step
            with its optimiser state and history (``params`` must hold the parameters
            saved with it; the caller restores those and its sampling generator).
        save_state: called with the loop's state (``step``, ``optimizer``, ``schedule``,
            ``losses``, ``seconds``, ``parts``) every ``save_every`` steps, at the end,
            and when training is interrupted (``KeyboardInterrupt``), before re-raising;
            not when the interrupt lands while Adam updates the parameters, whose state
            is then half-way (the one saved last stands).
        halve_every: steps between halvings of β (schedule ``"halving"`` only).
        after_step: called as ``after_step(step)`` after each update, before the state is
            saved (so that what it records, e.g. a validation score, is saved with it).
        max_grad_norm: if above 0, the gradient of all ``params`` together is scaled down
            to this norm before each Adam step (``torch.nn.utils.clip_grad_norm_``; Ravi &
            Larochelle 2017 clip their meta-learner's gradients so); 0: never.

    Raises:
        FloatingPointError: when the loss is NaN or infinite, naming the step.
    """
    checks.count("meta_steps", meta_steps, 0)
    check_outer_lr(outer_lr, outer_lr_schedule)
    checks.count("save_every", save_every, 1)
    checks.count("halve_every", halve_every, 1)
    if max_grad_norm != 0:
        checks.positive_number("max_grad_norm", max_grad_norm)
    leaves = list(params.values())
    if not all(p.is_leaf and p.requires_grad for p in leaves):
        raise ValueError("params must be leaf tensors with requires_grad=True.")
    optimizer = torch.optim.Adam(leaves, lr=outer_lr, foreach=True)
    schedule = None
    if outer_lr_schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(meta_steps, 1))
    elif outer_lr_schedule == "halving":
        schedule = torch.optim.lr_scheduler.StepLR(optimizer, step_size=halve_every, gamma=0.5)
    history, first = History(), 0
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(resume["schedule"])
        history = History(losses=list(resume["losses"]), seconds=resume["seconds"])
        first = resume["step"]
    here = runtime.describe_device(leaves[0].device)
    before = [list(part) for part in (resume or {}).get("parts", [])]
    unrecorded = first - sum(steps for _, steps in before)  # a state older than parts
    if unrecorded > 0:
        before.append(["not recorded", unrecorded])
    start = time.perf_counter() - history.seconds

    def parts(step: int) -> list[list]:
        """Where steps 0..``step`` ran: the earlier parts, then this one."""
        return merge_parts([*before, [here, step - first]])

    def state(step: int) -> dict:
        return {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "schedule": None if schedule is None else schedule.state_dict(),
            "losses": list(history.losses),
            "seconds": time.perf_counter() - start,
            "parts": parts(step),
        }

    bar = tqdm(
        range(first, meta_steps),
        desc=description,
        disable=not progress,
        mininterval=0.5,
        initial=first,
        total=meta_steps,
        file=NotebookLine() if progress and in_notebook() else None,
    )
    updating = [False]  # True from optimizer.step() until the step is counted

    def run_steps() -> None:
        """One Adam step per iteration of ``bar``."""
        for step in bar:
            loss = step_loss(step)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"the loss became {value} at outer step {step}: lower outer_lr or inner_lr."
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_(leaves, max_grad_norm, foreach=True)
            updating[0] = True
            optimizer.step()
            if schedule is not None:
                schedule.step()
            history.losses.append(value)
            updating[0] = False
            if after_step is not None:
                after_step(step)
            if not bar.disable and step % 100 == 0:
                bar.set_postfix(loss=f"{value:.3f}", refresh=False)
            if save_state is not None and (step + 1) % save_every == 0:
                save_state(state(step + 1))
            if callback is not None and callback(step, value):
                history.stopped_early = True
                break

    try:
        run_steps()
    except KeyboardInterrupt:
        # Stopped inside a step: before its update nothing is lost (the caller rewinds its
        # sampling to the step's start); during the update the parameters are half-way, so
        # the state saved last stands.
        if save_state is not None and not updating[0]:
            save_state(state(len(history.losses)))
        raise
    bar.close()
    history.seconds = time.perf_counter() - start
    history.parts = parts(len(history.losses))
    if save_state is not None:
        save_state(state(len(history.losses)))
    return history


@dataclass(frozen=True)
class Curve:
    """Mean and 95% confidence half-width of a per-task metric, after 0..S inner steps.

    A task whose loss is not finite or above ``DIVERGED`` after a step counts as diverged
    at that step; the mean then includes it (so it is NaN or huge), and ``diverged``
    says how many tasks did. Nothing is dropped silently.
    """

    mean: tuple[float, ...]
    ci95: tuple[float, ...]
    n_tasks: int
    diverged: tuple[int, ...] = ()

    def at(self, step: int) -> tuple[float, float]:
        return self.mean[step], self.ci95[step]

    def to_dict(self, steps: tuple[int, ...]) -> dict[str, dict[str, float | int | None]]:
        """JSON-ready: a non-finite mean or interval becomes None."""

        def finite(value: float) -> float | None:
            return value if math.isfinite(value) else None

        diverged = self.diverged or (0,) * len(self.mean)
        return {
            str(s): {
                "mean": finite(self.mean[s]),
                "ci95": finite(self.ci95[s]),
                "diverged_tasks": diverged[s],
            }
            for s in steps
        }


def mean_ci95(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and normal-approximation 95% half-width along dim 0 (``1.96 · sd / √n``)."""
    n = values.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 tasks for a confidence interval, got {n}.")
    return values.mean(0), 1.96 * values.std(0, unbiased=True) / math.sqrt(n)


def losses_by_step(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    inner_lr: maml.InnerLr = 0.01,
    max_steps: int = 10,
    adapt_only: Collection[str] | None = None,
    chunk: int = 500,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Query loss of every task after 0, 1, ..., ``max_steps`` inner steps.

    Args:
        tasks: a :class:`~metalib.tasks.TaskBatch` or
            :class:`~metalib.data.episodes.Episodes` (anything with ``support``,
            ``query``, and tensors whose first dimension is the task).
        metric_fn: what to score the query set with (default: ``loss_fn``), e.g.
            :func:`accuracy` for classification; adaptation always uses ``loss_fn``.

    Returns:
        ``(max_steps + 1, tasks)``: row ``s`` is the metric after ``s`` steps of
        :func:`~metalib.algorithms.maml.adapt` on the task's support set.
    """
    maml.check_hyperparameters(inner_lr=inner_lr, inner_steps=max_steps)
    frozen = {k: v.detach() for k, v in params.items()}
    score = loss_fn if metric_fn is None else metric_fn

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        adapted, out = frozen, []
        for step in range(max_steps + 1):
            out.append(score(functional_call(model, adapted, (xq,)), yq))
            if step < max_steps:
                adapted = maml.adapt(
                    model,
                    adapted,
                    xs,
                    ys,
                    loss_fn=loss_fn,
                    inner_lr=inner_lr,
                    inner_steps=1,
                    adapt_only=adapt_only,
                )
        return torch.stack(out)  # (max_steps + 1,)

    return by_task(one, tasks, chunk=chunk).T


def by_task(
    one: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor], tasks: TaskBatch, *, chunk: int = 500
) -> Tensor:
    """``one(x_support, y_support, x_query, y_query)`` for every task of ``tasks``, under
    ``vmap``, ``chunk`` tasks at a time (bounded memory) and without gradients:
    ``(tasks, ...)``."""
    pieces = []
    for lo in range(0, len(tasks), chunk):
        part = type(tasks)(*(t[lo : lo + chunk] for t in tasks))
        with torch.no_grad():
            pieces.append(vmap(one)(*part.support, *part.query))  # (chunk, ...)
    return torch.cat(pieces).detach()


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """The fraction of ``(n, classes)`` logits whose argmax is the ``(n,)`` label."""
    return (logits.argmax(dim=-1) == labels).float().mean()


def evaluate(
    model: nn.Module,
    params: Params,
    tasks: TaskBatch,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = F.mse_loss,
    inner_lr: maml.InnerLr = 0.01,
    max_steps: int = 10,
    adapt_only: Collection[str] | None = None,
    metric_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    chunk: int = 500,
) -> Curve:
    """Mean query loss (or ``metric_fn``) with 95% interval after 0..``max_steps`` steps
    (tasks adapted ``chunk`` at a time, see :func:`losses_by_step`)."""
    per_task = losses_by_step(
        model,
        params,
        tasks,
        loss_fn=loss_fn,
        inner_lr=inner_lr,
        max_steps=max_steps,
        adapt_only=adapt_only,
        metric_fn=metric_fn,
        chunk=chunk,
    )
    return curve(per_task)


def curve(per_task: Tensor) -> Curve:
    """The :class:`Curve` of ``(steps + 1, tasks)`` per-task losses (:func:`losses_by_step`)."""
    mean, ci = mean_ci95(per_task.T)
    diverged = (~torch.isfinite(per_task) | (per_task > DIVERGED)).sum(1)
    return Curve(
        tuple(mean.tolist()),
        tuple(ci.tolist()),
        n_tasks=per_task.shape[1],
        diverged=tuple(diverged.tolist()),
    )
