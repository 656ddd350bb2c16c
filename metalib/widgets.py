"""Interactive panels (ipywidgets). They only wrap plotting and algorithm functions.

:class:`AdaptationPanel` redraws how MAML and the pretrained baseline adapt to one
sinusoid task as the reader moves sliders for K, inner steps, the inner learning rate,
the task's amplitude and phase, and the range the support points are drawn from. The
figure is rendered to PNG into an ``ipywidgets.Image``, so the panel works (and is
tested) without a browser. Used in ``notebooks/02_maml_sinusoid.ipynb``.

:class:`EpisodePanel` draws Omniglot episodes with the n_way, k_shot and k_query the
reader picks, and a new one at each press of its button. Used in
``notebooks/05_omniglot_episodes.ipynb``.

:class:`TrainingMonitor` is a training callback that redraws the loss, and optionally a
test accuracy, while training runs. :class:`AccuracyPanel` redraws the per-step accuracy
of a classifier for chosen test-time inner steps and step size. Both are used in
``notebooks/06_maml_omniglot.ipynb``.

:class:`PrototypePanel` redraws a Prototypical Network's test accuracy and one episode's
embedding as the reader changes ``n_way`` and ``k_shot`` at test time. Used in
``notebooks/07_prototypical_networks.ipynb``.

:class:`ContextPanel` redraws a conditional neural process's prediction and uncertainty
band as the reader changes the number of context points and the task. Used in
``notebooks/08_model_based.ipynb``.

A widget needs a live kernel. :func:`show` displays a panel and, beneath it, a static
picture of its current state, so that a notebook read without a kernel (GitHub, the HTML
book) still shows the figure; :meth:`TrainingMonitor.finish` ends a training run with a
static picture of the whole curve.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections.abc import Collection

import ipywidgets as widgets
import torch
import torch.nn.functional as F
from IPython.display import display
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import nn
from torch.func import functional_call

from metalib import checks, evaluation
from metalib.algorithms import cnp, lstm_meta, maml
from metalib.algorithms.maml import InnerLr
from metalib.data.episodes import EpisodeSampler
from metalib.data.omniglot import Omniglot
from metalib.data.splits import ClassSplit
from metalib.models import parameters_of
from metalib.plotting import (
    plot_adaptation,
    plot_cnp_prediction,
    plot_curves,
    plot_embedding,
    plot_episode,
)
from metalib.recipes import metric_omniglot
from metalib.recipes.sinusoid import Learner
from metalib.tasks import SinusoidTasks, TaskBatch
from metalib.training import accuracy, evaluate


def _slider(kind, description: str, **kw) -> widgets.Widget:
    style = {"description_width": "initial"}
    return kind(description=description, continuous_update=False, style=style, **kw)


def _task_sliders(range_description: str) -> dict[str, widgets.Widget]:
    """Sliders for a sinusoid task's amplitude and phase and the range its points come from."""
    return {
        "amplitude": _slider(
            widgets.FloatSlider, "amplitude", min=0.1, max=5.0, value=3.0, step=0.1
        ),
        "phase": _slider(
            widgets.FloatSlider, "phase", min=0.0, max=round(math.pi, 2), value=1.0, step=0.05
        ),
        "support_range": _slider(
            widgets.FloatRangeSlider,
            range_description,
            min=-5.0,
            max=5.0,
            value=(-5.0, 5.0),
            step=0.5,
        ),
    }


def _png(figure: Figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


SNAPSHOT_NOTE = (
    "A static picture of the panel above, as it was drawn; in a running notebook the panel "
    "redraws as you change it."
)


def snapshot(panel, note: str = SNAPSHOT_NOTE) -> dict[str, str]:
    """A static picture of ``panel`` as it stands: its figure (``panel.image``) and summary
    line (``panel.summary``), as a display bundle (HTML with the figure inline, the PNG
    alone, and plain text) that any notebook renderer can show without a kernel."""
    png = base64.b64encode(panel.image.value).decode()
    line = panel.summary.value
    plain = html.unescape(re.sub(r"<[^>]+>", "", line))
    return {
        "text/html": (
            f'<div><p>{line}</p><img alt="{html.escape(plain)}" '
            f'src="data:image/png;base64,{png}"/><p><i>{note}</i></p></div>'
        ),
        "image/png": png,
        "text/plain": f"static picture of the panel: {plain}",
    }


def show(panel) -> None:
    """Display ``panel.widget``, then beneath it :func:`snapshot` of its current state."""
    display(panel.widget)
    display(snapshot(panel), raw=True)


class AdaptationPanel:
    """Sliders that redraw MAML's and a baseline's adaptation to one sinusoid task.

    Args:
        models: ``{"MAML": model, "pretrained": model}``: each is adapted from its own
            parameters with :func:`metalib.algorithms.maml.adapt`. A
            :class:`metalib.recipes.sinusoid.Learner` adapts as it was trained: only its
            ``adapt_only`` parameters, and with its learned step sizes if it has them
            (Meta-SGD), in which case the inner-lr slider does not apply to it and the
            summary line says so; one with a learned update rule (LSTM meta-learner) takes
            its rule's steps, and the slider does not apply to it either.
        seed: seeds the support points, so moving one slider does not redraw the others.
        query_points: points used to score each adapted model (the summary line).

    Attributes:
        widget: the panel to display.
        controls: the controls by name (``method``, ``k_shot``, ``inner_steps``,
            ``inner_lr``, ``amplitude``, ``phase``, ``support_range``); ``method`` picks
            which model is drawn (all by default).
        summary: an HTML line with the query MSE of each model after adaptation.
        image: the rendered figure.
    """

    def __init__(
        self, models: dict[str, nn.Module], *, seed: int = 0, query_points: int = 200
    ) -> None:
        if not models:
            raise ValueError("models must name at least one model, e.g. {'MAML': model}.")
        self.models = models
        self.seed = seed
        self.query_points = query_points
        self.controls = {
            "method": widgets.Dropdown(options=["all", *models], value="all", description="method"),
            "k_shot": _slider(widgets.IntSlider, "K (support points)", min=1, max=20, value=5),
            "inner_steps": _slider(widgets.IntSlider, "inner steps", min=0, max=20, value=1),
            "inner_lr": _slider(
                widgets.FloatLogSlider,
                "inner lr α",
                base=10,
                min=-3,
                max=-0.5,
                value=0.01,
                readout_format=".3f",
            ),
            **_task_sliders("support x range"),
        }
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png")
        for control in self.controls.values():
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox(
                    [
                        widgets.VBox(list(self.controls.values())[:3]),
                        widgets.VBox(list(self.controls.values())[3:]),
                    ]
                ),
                self.summary,
                self.image,
            ]
        )
        self.redraw()

    def state(self) -> dict:
        return {name: control.value for name, control in self.controls.items()}

    def task(self):
        """The task the sliders describe (support points seeded by ``seed``)."""
        s = self.state()
        low, high = s["support_range"]
        if high - low < 1e-6:
            raise ValueError(f"support_range={s['support_range']!r} is empty: widen it.")
        return SinusoidTasks().sample(
            1,
            k_shot=s["k_shot"],
            k_query=self.query_points,
            generator=torch.Generator().manual_seed(self.seed),
            support_range=(low, high),
            amplitude=s["amplitude"],
            phase=s["phase"],
        )

    def _adaptation(self, name: str) -> tuple[nn.Module, dict, InnerLr, Collection[str] | None]:
        """(model, params, step size, adapt_only) of ``name`` under the current sliders."""
        entry, slider_lr = self.models[name], self.controls["inner_lr"].value
        if isinstance(entry, Learner):
            learned = isinstance(entry.inner_lr, dict)
            return (
                entry.model,
                entry.params,
                entry.inner_lr if learned else slider_lr,
                entry.adapt_only,
            )
        return entry, parameters_of(entry), slider_lr, None

    def _rule(self, name: str) -> dict | None:
        entry = self.models[name]
        return entry.rule if isinstance(entry, Learner) else None

    def mse(self) -> dict[str, float]:
        """Query MSE of each model after adapting with the current slider values."""
        s, task = self.state(), self.task()
        out = {}
        for name in self.models:
            model, params, inner_lr, adapt_only = self._adaptation(name)
            here = task.to(next(iter(params.values())).device)  # drawn on the CPU
            support = (here.x_support[0], here.y_support[0])
            if (rule := self._rule(name)) is not None:
                adapted = lstm_meta.adapt(
                    model, params, rule, *support, inner_steps=s["inner_steps"]
                )
            else:
                adapted = maml.adapt(
                    model,
                    params,
                    *support,
                    inner_lr=inner_lr,
                    inner_steps=s["inner_steps"],
                    adapt_only=adapt_only,
                )
            with torch.no_grad():
                prediction = functional_call(model, adapted, (here.x_query[0],))
            out[name] = F.mse_loss(prediction, here.y_query[0]).item()
        return out

    def redraw(self) -> None:
        s, task = self.state(), self.task()
        names = list(self.models) if s["method"] == "all" else [s["method"]]
        figure = Figure(figsize=(5 * min(len(names), 3), 3.6 * math.ceil(len(names) / 3)), dpi=80)
        axes = figure.subplots(math.ceil(len(names) / 3), min(len(names), 3), squeeze=False)
        cmaps = ["Greens", "Blues", "Oranges", "Purples", "Reds", "Greys"]
        for ax, name in zip(axes.flat, names):
            model, params, inner_lr, adapt_only = self._adaptation(name)
            cmap = cmaps[list(self.models).index(name) % len(cmaps)]
            plot_adaptation(
                model,
                params,
                task,
                ax=ax,
                steps=sorted({0, s["inner_steps"]}),
                inner_lr=inner_lr,
                adapt_only=adapt_only,
                name=name,
                cmap=cmap,
                rule=self._rule(name),
            )
            ax.set(title=name, ylim=(-5.5, 5.5))
        for ax in list(axes.flat)[len(names) :]:
            ax.set_visible(False)
        self.image.value = _png(figure)
        learned = [
            n
            for n in self.models
            if isinstance(self.models[n], Learner) and isinstance(self.models[n].inner_lr, dict)
        ]
        ruled = [n for n in self.models if self._rule(n) is not None]
        scores = " · ".join(f"{name}: <b>{value:.3f}</b>" for name, value in self.mse().items())
        notes = [f"{', '.join(learned)}: learned step sizes"] if learned else []
        notes += [f"{', '.join(ruled)}: learned update rule"] if ruled else []
        note = f" ({'; '.join(notes)})" if notes else ""
        self.summary.value = (
            f"K={s['k_shot']}, {s['inner_steps']} inner steps, α={s['inner_lr']:.3f}{note} "
            f"→ query MSE {scores}"
        )


class EpisodePanel:
    """Sliders for ``n_way``, ``k_shot`` and ``k_query``, and a button for a new episode.

    Args:
        dataset: from :func:`metalib.data.omniglot.load`.
        classes: the split to draw from (:func:`metalib.data.splits.class_split`).
        seed: seeds the first episode; each press of "new episode" draws the next one.

    Attributes:
        widget: the panel to display.
        controls: ``n_way``, ``k_shot``, ``k_query`` sliders and the ``new`` button.
        summary: an HTML line naming the episode's classes.
        image: the rendered support and query grids.
        episode: the :class:`metalib.data.episodes.Episodes` on display (one task).
    """

    def __init__(self, dataset: Omniglot, classes: ClassSplit, *, seed: int = 0) -> None:
        self.dataset, self.classes = dataset, classes
        self.sampler = EpisodeSampler(dataset, classes, k_shot=1, k_query=1)  # images, once
        self.generator = torch.Generator().manual_seed(seed)
        self.controls = {
            "n_way": _slider(widgets.IntSlider, "n_way", value=5, min=2, max=min(20, len(classes))),
            "k_shot": _slider(widgets.IntSlider, "k_shot", value=1, min=1, max=10),
            "k_query": _slider(widgets.IntSlider, "k_query", value=5, min=1, max=10),
            "new": widgets.Button(description="new episode", icon="refresh"),
        }
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png")
        for name in ("n_way", "k_shot", "k_query"):
            self.controls[name].observe(lambda _: self.redraw(), names="value")
        self.controls["new"].on_click(lambda _: self.redraw())
        sliders = widgets.HBox([self.controls[n] for n in ("n_way", "k_shot", "k_query", "new")])
        self.widget = widgets.VBox([sliders, self.summary, self.image])
        self.redraw()

    def redraw(self) -> None:
        """Draw a new episode with the current slider values."""
        n_way, k_shot, k_query = (self.controls[n].value for n in ("n_way", "k_shot", "k_query"))
        sampler = self.sampler.with_shape(n_way=n_way, k_shot=k_shot, k_query=k_query)
        classes, drawers = sampler.sample_indices(1, generator=self.generator)
        self.episode = sampler.gather(classes, drawers)
        figure = Figure(
            figsize=(2.5 + 0.55 * (k_shot + min(k_query, 5)), 0.9 + 0.55 * n_way), dpi=80
        )
        axes = figure.subplots(1, 2, width_ratios=(k_shot, min(k_query, 5)))
        plot_episode(*(t[0] for t in self.episode), axes=axes)
        self.image.value = _png(figure)
        names = sampler.class_names(classes[0], self.dataset)
        self.summary.value = "classes: " + " · ".join(
            f"<b>{label}</b> {name}" for label, name in enumerate(names)
        )


class AccuracyPanel:
    """Sliders for the test-time inner steps and inner learning rate of a classifier.

    Each change re-adapts the model to the same test episodes and redraws the query
    accuracy (mean and 95% interval) after every inner step.

    Args:
        model, params: the classifier (e.g. from
            :func:`metalib.recipes.load`).
        test: the test episodes to adapt to (a few dozen keep the panel responsive on a CPU).
        inner_lr, inner_steps: the sliders' starting values (the training recipe's).

    Attributes:
        widget, controls (``inner_steps``, ``inner_lr``), summary, image, curve.
    """

    def __init__(
        self, model: nn.Module, params: dict, test, *, inner_lr: float, inner_steps: int
    ) -> None:
        self.model, self.params, self.test = model, params, test
        self.controls = {
            "inner_steps": _slider(
                widgets.IntSlider, "inner steps", value=inner_steps, min=0, max=10
            ),
            "inner_lr": _slider(
                widgets.FloatLogSlider,
                "inner lr",
                value=inner_lr,
                base=10,
                min=-2,
                max=0.3,
                step=0.05,
            ),
        }
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png")
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox(list(self.controls.values())), self.summary, self.image]
        )
        self.redraw()

    def redraw(self) -> None:
        steps, inner_lr = self.controls["inner_steps"].value, self.controls["inner_lr"].value
        mode = self.model.training
        self.model.eval()  # running batch-norm statistics, if the model keeps them
        try:
            self.curve = evaluate(
                self.model,
                self.params,
                self.test,
                loss_fn=F.cross_entropy,
                inner_lr=inner_lr,
                max_steps=steps,
                metric_fn=accuracy,
            )
        finally:
            self.model.train(mode)
        figure = Figure(figsize=(5, 3.2), dpi=80)
        ax = figure.subplots()
        plot_curves({f"α = {inner_lr:.2f}": self.curve}, ax=ax, ylabel="query accuracy")
        ax.set(ylim=(0, 1.02), xlim=(-0.3, max(steps, 1) + 0.3))
        self.image.value = _png(figure)
        self.summary.value = (
            f"{len(self.test)} test episodes, α={inner_lr:.2f}: accuracy after {steps} steps "
            f"<b>{self.curve.mean[-1]:.3f} ± {self.curve.ci95[-1]:.3f}</b>"
        )


class TrainingMonitor:
    """A ``train_loop`` callback that redraws the training loss while training runs.

    Args:
        every: redraw after every ``every`` outer steps (and on :meth:`redraw`).
        evaluate: optional function returning a test accuracy, called every
            ``eval_every`` steps and drawn on a second axis.
        eval_every: steps between calls of ``evaluate``.

    Attributes:
        widget, image, summary; ``losses`` (one per step) and ``accuracy``
        (``{step: value}``).
    """

    def __init__(self, *, every: int = 50, evaluate=None, eval_every: int = 1000) -> None:
        checks.count("every", every, 1)
        checks.count("eval_every", eval_every, 1)
        self.every, self.evaluate, self.eval_every = every, evaluate, eval_every
        self.losses: list[float] = []
        self.accuracy: dict[int, float] = {}
        self.image = widgets.Image(format="png")
        self.summary = widgets.HTML("waiting for the first steps")
        self.widget = widgets.VBox([self.summary, self.image])

    def __call__(self, step: int, loss: float) -> bool:
        self.losses.append(loss)
        if self.evaluate is not None and (step + 1) % self.eval_every == 0:
            self.accuracy[step + 1] = float(self.evaluate())
        if (step + 1) % self.every == 0:
            self.redraw()
        return False  # never stops training

    def redraw(self) -> None:
        figure = Figure(figsize=(6, 3), dpi=80)
        ax = figure.subplots()
        ax.plot(range(1, len(self.losses) + 1), self.losses, lw=1, color="#1f618d")
        ax.set(xlabel="outer step", ylabel="meta-training loss")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers
        text = f"step {len(self.losses)}: loss {self.losses[-1]:.3f}" if self.losses else ""
        if self.accuracy:
            right = ax.twinx()
            right.plot(list(self.accuracy), list(self.accuracy.values()), "o-", color="#1e8449")
            right.set(ylabel="test accuracy", ylim=(0, 1))
            last = max(self.accuracy)
            text += f" · test accuracy {self.accuracy[last]:.3f} at step {last}"
        self.image.value = _png(figure)
        self.summary.value = text

    def finish(self) -> None:
        """Redraw with every step, and display the result as a static picture: the
        training curve a notebook read without a kernel shows."""
        if not self.losses:
            raise ValueError("finish() comes after training: the monitor has seen no step.")
        self.redraw()
        display(snapshot(self, "The training curve at the end of training."), raw=True)


class PrototypePanel:
    """Sliders for a Prototypical Network's test-time ``n_way`` and ``k_shot``.

    Each change draws ``episodes`` test episodes of that shape (the same seed every
    time), redraws the mean query accuracy with its 95% interval, and the first
    episode's queries and prototypes in a 2-D PCA projection.

    Args:
        model: a trained :class:`~metalib.models.ConvEmbedding`.
        config: its :class:`~metalib.recipes.metric_omniglot.MetricConfig` (its distance).
        sampler: test episodes (:func:`metalib.evaluation.evaluation_sampler`); its images are
            shared, and the sliders set the shape.
        episodes: episodes per redraw (a few dozen keep it responsive on a CPU).
        k_query: query images per class in the panel's episodes.

    Attributes:
        widget, controls (``n_way``, ``k_shot``), summary, image, score.
    """

    def __init__(
        self,
        model: nn.Module,
        config: metric_omniglot.MetricConfig,
        sampler: EpisodeSampler,
        *,
        episodes: int = 20,
        k_query: int = 5,
        seed: int = 0,
    ) -> None:
        self.model, self.config, self.sampler = model, config, sampler
        self.episodes = checks.count("episodes", episodes, 2)
        self.k_query, self.seed = k_query, seed
        drawers = sampler.images.shape[1]
        self.controls = {
            "n_way": _slider(
                widgets.IntSlider, "n_way", value=5, min=2, max=min(60, len(sampler.classes))
            ),
            "k_shot": _slider(
                widgets.IntSlider, "k_shot", value=1, min=1, max=min(10, drawers - k_query)
            ),
        }
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png")
        for control in self.controls.values():
            control.observe(lambda _: self.redraw(), names="value")
        self.widget = widgets.VBox(
            [widgets.HBox(list(self.controls.values())), self.summary, self.image]
        )
        self.redraw()

    def redraw(self) -> None:
        n_way, k_shot = self.controls["n_way"].value, self.controls["k_shot"].value
        sampler = self.sampler.with_shape(n_way=n_way, k_shot=k_shot, k_query=self.k_query)
        self.score = metric_omniglot.score_of(
            self.model, self.config, sampler, n_episodes=self.episodes, seed=self.seed
        )
        episode = sampler.sample(1, generator=evaluation.test_generator(self.seed))
        query, protos = metric_omniglot.embed_episode(self.model, episode, n_way)
        figure = Figure(figsize=(5, 4), dpi=80)
        plot_embedding(
            query[0], episode.y_query[0], protos[0], ax=figure.subplots(), title="one test episode"
        )
        self.image.value = _png(figure)
        self.summary.value = (
            f"{self.episodes} test episodes, {n_way}-way {k_shot}-shot: accuracy "
            f"<b>{self.score.mean:.3f} ± {self.score.ci95:.3f}</b>"
        )


class ContextPanel:
    """Sliders for the context points a CNP reads, and for the task they come from.

    The support points are the first ``K`` of one seeded draw of ``max_context``, so
    moving the K slider adds or removes points and keeps the others where they were.

    Args:
        model: a :class:`~metalib.algorithms.cnp.CNP` (or anything called as
            ``model(x_support, y_support, x_query) -> (mean, std)``).
        seed: seeds the draw of the points.
        max_context: the K slider's largest value.
        query_points: points used to score the prediction (the summary line).

    Attributes:
        widget, controls (``k_shot``, ``amplitude``, ``phase``, ``support_range``),
        summary (query MSE and negative log-likelihood), image.
    """

    def __init__(
        self, model: nn.Module, *, seed: int = 0, max_context: int = 20, query_points: int = 200
    ) -> None:
        checks.count("max_context", max_context, 1)
        self.model, self.seed, self.query_points = model, seed, query_points
        self.controls = {
            "k_shot": _slider(
                widgets.IntSlider, "K (context points)", min=1, max=max_context, value=5
            ),
            **_task_sliders("context x range"),
        }
        self.summary = widgets.HTML()
        self.image = widgets.Image(format="png")
        for control in self.controls.values():
            control.observe(lambda _change: self.redraw(), names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox(list(self.controls.values())[:2]),
                widgets.HBox(list(self.controls.values())[2:]),
                self.summary,
                self.image,
            ]
        )
        self.redraw()

    def task(self):
        """The task the sliders describe, with the first K of the seeded context points."""
        low, high = self.controls["support_range"].value
        if high - low < 1e-6:
            raise ValueError(f"support_range={(low, high)!r} is empty: widen it.")
        k = self.controls["k_shot"].value
        full = SinusoidTasks().sample(
            1,
            k_shot=self.controls["k_shot"].max,
            k_query=self.query_points,
            generator=torch.Generator().manual_seed(self.seed),
            support_range=(low, high),
            amplitude=self.controls["amplitude"].value,
            phase=self.controls["phase"].value,
        )
        return TaskBatch(full.x_support[:, :k], full.y_support[:, :k], *full[2:])

    def scores(self, task: TaskBatch | None = None) -> dict[str, float]:
        """Query MSE of the predictive mean and query NLL of ``task`` (default: the sliders')."""
        task = (self.task() if task is None else task).to(next(self.model.parameters()).device)
        with torch.no_grad():
            mean, std = self.model(task.x_support, task.y_support, task.x_query)
        nll = cnp.gaussian_nll(mean, std, task.y_query)
        return {"mse": F.mse_loss(mean, task.y_query).item(), "nll": nll.item()}

    def redraw(self) -> None:
        task = self.task()
        figure = Figure(figsize=(6, 3.6), dpi=80)
        ax = figure.subplots()
        plot_cnp_prediction(self.model, task, ax=ax)
        ax.set(ylim=(-5.5, 5.5), title=f"K = {task.x_support.shape[1]} context points")
        self.image.value = _png(figure)
        s = self.scores(task)
        self.summary.value = (
            f"K={task.x_support.shape[1]} → query MSE <b>{s['mse']:.3f}</b>, "
            f"negative log-likelihood <b>{s['nll']:.3f}</b> (no gradient step)"
        )
