"""Sinusoid regression: ``sinusoid-maml``, ``-fomaml``, ``-reptile``, ``-meta-sgd``,
``-anil``, ``-lstm-meta`` and ``-pretrain``.

The seven recipes share the setting of MAML's sinusoid experiment (Finn et al. 2017,
section 5.1): a 1-40-40-1 ReLU network, K = 10, inner step 0.01, Adam. The command line,
the notebooks and the benchmarks all train through :func:`train` and load through
:func:`metalib.recipes.load`, so a checkpoint made by one is what the others see. Taught in
``notebooks/02_maml_sinusoid.ipynb``, ``03_beyond_maml.ipynb`` and
``04_learned_update_rule.ipynb``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from metalib import checks, runtime, training
from metalib.algorithms import lstm_meta, maml, meta_sgd, pretrain, reptile
from metalib.evaluation import TEST_SEED, VALIDATION_SEED, held_out_tasks
from metalib.models import SinusoidMLP, parameters_of
from metalib.recipes.base import Config, Flag, Run, Validation, fit, load_weights
from metalib.tasks import SinusoidTasks
from metalib.training import Curve, check_outer_lr

METHODS = ("maml", "fomaml", "reptile", "meta-sgd", "anil", "lstm-meta", "pretrain")
# What differs from the shared defaults, per method (see each module for why). FOMAML and
# Meta-SGD keep the paper's one step: with two, FOMAML's 5-step test error over five seeds
# rose from 0.51 ± 0.09 to 0.72 ± 0.08 (its first-order outer step ignores more of the
# inner loop), and Meta-SGD's learned step sizes are tuned for one step (chapter 03); with
# more steps and unclipped step sizes its training diverges (``clip_steps`` fixes that).
# The LSTM meta-learner is first-order, as its paper (lstm_meta's docstring), and takes
# 5 steps: its rule learns per step, so it is trained for the steps it is tested with. Its
# rule is what makes it slow (0.40 s per outer step of 25 tasks with the paper's 20 hidden
# units on one CPU thread, 0.11 s with 8), so it trains 25 tasks per step with 8 units. On
# the shared CPU, K = 5 test MSE after 5 / 10 steps: 1.37 / 1.20 with β = 0.001 for 2,000
# steps (still falling); with a constant β of 0.002-0.005 the loss jumped 20- to 800-fold
# mid-training (20 units: 4 test tasks diverge); clipping the meta-gradient's norm to 1
# (Ravi & Larochelle clip theirs) under a cosine β made it steady: 0.59 / 0.52 with β = 0.003
# for 4,000 steps, 0.71 / 0.50 with β = 0.005, 0.83 / 0.69 with 50 tasks per step; but the
# first run was no draw to trust (the same recipe on 2 threads instead of 1: 1.16 / 1.89).
# Trained on the K = 5 it is tested with (as ANIL_k5, chapter 03), it reached 0.46 / 0.56.
# Pretraining takes no inner step. Trained 4,500 steps like the others, it missed the paper's
# baseline (2.23 ± 0.25 after 5 steps) on one seed of five (seed 4: 2.81); trained 36,000
# steps, seeds 3 and 4 swapped roles (2.55 and 2.43): its error after fine-tuning is not what
# it trains, and it drifts, up or down with the seed, as the pooled fit sharpens. So it trains
# 36,000 steps and keeps the step of the lowest validation MSE after 5 fine-tuning steps,
# checked every 4,500 (data/results/sinusoid_seeds*.json, docs/retraining.md).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "fomaml": {"first_order": True, "inner_steps": 1},
    "reptile": {"inner_steps": 5},
    "meta-sgd": {"inner_steps": 1},
    "anil": {"inner_steps": 5},
    "lstm-meta": {
        "inner_steps": 5,
        "first_order": True,
        "k_shot": 5,
        "meta_steps": 4_000,
        "meta_batch_size": 25,
        "outer_lr": 3e-3,
        "outer_lr_schedule": "cosine",
        "rule_hidden": 8,
        "max_grad_norm": 1.0,
    },
    "pretrain": {"inner_steps": 0, "meta_steps": 36_000, "validate_every": 4_500},
}
RECIPES = {
    "sinusoid-maml": "MAML on sinusoid regression (Finn et al. 2017, section 5.1)",
    "sinusoid-fomaml": "first-order MAML (drops the Hessian term)",
    "sinusoid-reptile": "Reptile (Nichol et al. 2018), 5 inner steps",
    "sinusoid-meta-sgd": "Meta-SGD (Li et al. 2017): learned per-weight inner step sizes",
    "sinusoid-anil": "ANIL (Raghu et al. 2020): only the last layer adapts, 5 inner steps",
    "sinusoid-lstm-meta": "the LSTM meta-learner (Ravi & Larochelle 2017): a learned update rule",
    "sinusoid-pretrain": "the paper's baseline: one network regressed on all tasks",
}
_INNER = ("maml", "fomaml", "reptile", "meta-sgd", "anil", "lstm-meta")
# Model selection (``validate_every``): the MSE over these validation tasks (drawn with
# ``evaluation.VALIDATION_SEED``, never the test tasks' seed) after this many steps at K = 5.
VALIDATION_TASKS = 1000
VALIDATION_STEPS = 5


@dataclass(frozen=True)
class SinusoidConfig(Config):
    """Hyperparameters of a sinusoid run. The defaults are the shipped checkpoints' recipe.

    It keeps the paper's network, inner step size α = 0.01, K = 10 and Adam, but takes 200
    tasks per outer step with β = 0.005 for 4,500 steps instead of 25 tasks with β = 0.001
    for 70,000: under ``vmap`` a larger meta-batch costs almost nothing more per step. And it
    trains MAML with two inner steps, not the paper's one: the paper's targets are the error
    after 5 and 10 test-time steps, and with one training step only two of five seeds reach
    them, with two every seed does (``data/results/sinusoid_seeds*.json``, chapter 02).
    :meth:`paper` gives the paper's exact setting; :meth:`for_method` a method's defaults.
    """

    method: str = "maml"
    meta_steps: int = 4_500
    meta_batch_size: int = 200
    k_shot: int = 10
    k_query: int = 10
    inner_lr: float = 0.01
    inner_steps: int = 2
    outer_lr: float = 5e-3
    outer_lr_schedule: str = "constant"
    first_order: bool = False
    clip_steps: float = 0.0
    rule_hidden: int = 20
    max_grad_norm: float = 0.0
    validate_every: int = 0
    hidden: tuple[int, ...] = (40, 40)
    seed: int = 0

    FLAGS: ClassVar[dict[str, Flag]] = {
        "meta_steps": Flag("outer steps"),
        "meta_batch_size": Flag("tasks per outer step"),
        "k_shot": Flag("support points per task in training"),
        "k_query": Flag("query points per task in training"),
        "inner_lr": Flag(
            "inner step size α (Meta-SGD: the step sizes' initial value; LSTM meta-learner: "
            "the input gate's)"
        ),
        "inner_steps": Flag("inner gradient steps in training", methods=_INNER),
        "outer_lr": Flag("Adam step size β"),
        "outer_lr_schedule": Flag("β over training", choices=training.SCHEDULES),
        "first_order": Flag(
            "drop second-order terms", methods=("maml", "meta-sgd", "anil", "lstm-meta")
        ),
        "clip_steps": Flag(
            "if above 0, keep every learned step size in [0, this] (projected after every "
            "outer step); 0: unconstrained, as in the paper",
            methods=("meta-sgd",),
        ),
        "rule_hidden": Flag(
            "units of the update rule's coordinate-wise LSTM", methods=("lstm-meta",)
        ),
        "max_grad_norm": Flag(
            "if above 0, clip the norm of the meta-gradient to this before each Adam step"
        ),
        "validate_every": Flag(
            f"if above 0, every this many steps and at the last, score the network on "
            f"{VALIDATION_TASKS:,} validation tasks (K = 5, MSE after {VALIDATION_STEPS} "
            "steps, as it adapts at test) and end with the best step's tensors; 0: the last"
        ),
        "hidden": Flag("widths of the hidden layers"),
        "seed": Flag("seed for weights and task sampling"),
    }

    def __post_init__(self) -> None:
        checks.one_of("method", self.method, METHODS)
        self.check_counts({"meta_steps": 0, "inner_steps": 0, "seed": 0, "validate_every": 0})
        self.check_counts({"meta_batch_size": 1, "k_shot": 1, "k_query": 1, "rule_hidden": 1})
        maml.check_hyperparameters(inner_lr=self.inner_lr, inner_steps=self.inner_steps)
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        if self.method == "fomaml" and not self.first_order:
            raise ValueError("method='fomaml' is first-order by definition: set first_order=True.")
        if self.method in ("reptile", "pretrain") and self.first_order:
            raise ValueError(f"first_order=True has no meaning for method={self.method!r}.")
        if self.clip_steps != 0:
            checks.positive_number("clip_steps", self.clip_steps)
        if self.max_grad_norm != 0:
            checks.positive_number("max_grad_norm", self.max_grad_norm)
        if self.clip_steps and self.method != "meta-sgd":
            raise ValueError(
                f"clip_steps={self.clip_steps} is for learned step sizes (method='meta-sgd'), "
                f"not method={self.method!r}: leave it at 0."
            )
        if self.clip_steps and not 0 <= self.inner_lr <= self.clip_steps:
            raise ValueError(
                f"clip_steps={self.clip_steps} with inner_lr={self.inner_lr}: start the step "
                f"sizes inside [0, {self.clip_steps}], e.g. inner_lr=0.01."
            )
        if self.method == "reptile" and self.inner_steps < 1:
            raise ValueError("method='reptile' needs inner_steps >= 1.")
        if self.method == "lstm-meta" and not 0 < self.inner_lr < 1:
            raise ValueError(
                f"inner_lr={self.inner_lr} is the LSTM meta-learner's first input gate, a "
                "sigmoid: choose it in (0, 1), e.g. 0.01."
            )
        if self.rule_hidden != 20 and self.method != "lstm-meta":
            raise ValueError(
                f"rule_hidden={self.rule_hidden} sizes a learned update rule "
                f"(method='lstm-meta'), not method={self.method!r}: leave it at 20."
            )

    @classmethod
    def for_method(cls, method: str, **overrides: Any) -> SinusoidConfig:
        """The recipe of ``method``: shared defaults, the method's own, then ``overrides``."""
        checks.one_of("method", method, METHODS)
        return cls(**{"method": method, **METHOD_DEFAULTS.get(method, {}), **overrides})

    @classmethod
    def paper(cls, method: str = "maml") -> SinusoidConfig:
        """The setting of Finn et al. 2017, §5.1: 70,000 steps of 25 tasks, β = 0.001 (and
        for MAML the paper's one inner step)."""
        paper = {"meta_steps": 70_000, "meta_batch_size": 25, "outer_lr": 1e-3}
        if method == "maml":
            paper["inner_steps"] = 1
        return cls.for_method(method, **paper)

    @property
    def recipe(self) -> str:
        return f"sinusoid-{self.method}"


@dataclass
class Learner:
    """What adapts at test time: the network, its step size(s) and what it adapts, or
    (LSTM meta-learner) the learned rule that adapts it."""

    model: SinusoidMLP
    config: SinusoidConfig
    inner_lr: float | dict[str, Tensor]
    adapt_only: tuple[str, ...] | None
    rule: dict[str, Tensor] | None = None

    @property
    def params(self) -> dict[str, Tensor]:
        return parameters_of(self.model)


def config(recipe: str, **overrides: Any) -> SinusoidConfig:
    """The config of ``recipe`` (e.g. ``"sinusoid-reptile"``) with ``overrides``."""
    return SinusoidConfig.for_method(recipe.removeprefix("sinusoid-"), **overrides)


def build(config: SinusoidConfig) -> SinusoidMLP:
    """A freshly initialised network for ``config``, seeded with ``config.seed``."""
    torch.manual_seed(config.seed)
    return SinusoidMLP(hidden=config.hidden)


def make_learner(config: SinusoidConfig, device: torch.device) -> Learner:
    """A freshly initialised learner for ``config`` (learned step sizes for Meta-SGD)."""
    model = build(config).to(device)
    inner_lr: float | dict[str, Tensor] = config.inner_lr
    if config.method == "meta-sgd":
        inner_lr = meta_sgd.init_inner_lr(parameters_of(model), value=config.inner_lr)
    adapt_only = model.head_names() if config.method == "anil" else None
    rule = None
    if config.method == "lstm-meta":
        generator = torch.Generator().manual_seed(config.seed)
        rule = lstm_meta.init_rule(
            config.rule_hidden, inner_lr=config.inner_lr, generator=generator
        )
        rule = {name: value.to(device).detach().requires_grad_() for name, value in rule.items()}
    return Learner(model, config, inner_lr, adapt_only, rule)


def step_loss_fn(
    learner: Learner,
    device: torch.device,
    *,
    generator: torch.Generator | None = None,
    meta_loss_fn=maml.meta_loss,
):
    """The function ``step -> loss`` that :func:`~metalib.training.train_loop` minimises.

    ``generator`` draws the tasks (default: a CPU generator seeded with the config's
    seed). ``meta_loss_fn`` (MAML-family methods only) is ``maml.meta_loss`` or, for
    timing the reference, ``maml.meta_loss_loop``.
    """
    config, model, params = learner.config, learner.model, learner.params
    family = SinusoidTasks()
    generator = generator or torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        tasks = family.sample(
            config.meta_batch_size,
            k_shot=config.k_shot,
            k_query=config.k_query,
            generator=generator,
            device=device,
        )
        if config.method == "pretrain":
            return pretrain.pooled_loss(model, params, tasks)
        if config.method == "reptile":
            return reptile.surrogate_loss(
                model, params, tasks, inner_lr=config.inner_lr, inner_steps=config.inner_steps
            )
        if learner.rule is not None:
            return lstm_meta.meta_loss(
                model,
                params,
                learner.rule,
                tasks,
                inner_steps=config.inner_steps,
                first_order=config.first_order,
            )
        return meta_loss_fn(
            model,
            params,
            tasks,
            inner_lr=learner.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
            adapt_only=learner.adapt_only,
        )

    return step_loss


def train(
    config: SinusoidConfig,
    *,
    device: torch.device | str | None = None,
    **loop: Any,
) -> Run:
    """Train a fresh learner with ``config`` on ``device`` (automatic if None).

    With ``config.validate_every``, it ends with the tensors of the step whose validation
    MSE was lowest (:func:`validation_mse`), recorded in ``run.history.selected``.
    ``loop`` goes to :func:`metalib.recipes.base.fit` (``callback``, ``resume_path``, ...).
    """
    dev = runtime.device(device)
    learner = make_learner(config, dev)
    trainable = dict(learner.params)
    if isinstance(learner.inner_lr, dict):
        trainable.update(meta_sgd.to_state_refs(learner.inner_lr))
    if learner.rule is not None:
        trainable.update(lstm_meta.to_state_refs(learner.rule))
    generator = torch.Generator().manual_seed(config.seed)
    project = None
    if config.clip_steps:

        def project() -> None:
            for step_size in learner.inner_lr.values():
                step_size.clamp_(min=0.0, max=config.clip_steps)

    validation = None
    if config.validate_every:
        validation = Validation(
            config.validate_every,
            lambda: validation_mse(learner),
            name=f"val_mse_k5_{VALIDATION_STEPS}_steps",
            lower_is_better=True,
        )
    history = fit(
        step_loss_fn(learner, dev, generator=generator),
        trainable,
        config,
        model=learner.model,
        generator=generator,
        project=project,
        validation=validation,
        **loop,
    )
    if isinstance(learner.inner_lr, dict):
        meta_sgd.check_inner_lr(learner.inner_lr, learner.params)
    if learner.rule is not None:
        lstm_meta.hidden_size(learner.rule)  # raises if training left non-finite tensors
    return Run(config, learner.model.eval(), trainable, history, dev)


def learner_of(run: Run) -> Learner:
    """What adapts at test time in ``run``: its network, step size(s) and adapted layers,
    or its learned update rule."""
    config = run.config
    weights, rule = lstm_meta.from_state(run.params)
    _, lrs = meta_sgd.from_state(weights)
    inner_lr: float | dict[str, Tensor] = lrs if config.method == "meta-sgd" else config.inner_lr
    adapt_only = run.model.head_names() if config.method == "anil" else None
    return Learner(run.model, config, inner_lr, adapt_only, rule if rule else None)


def mse_by_step(
    model: SinusoidMLP | Learner | Run,
    *,
    k_shot: int = 5,
    n_tasks: int = 1000,
    inner_lr: float | None = None,
    max_steps: int = 10,
    seed: int = TEST_SEED,
    support_range: tuple[float, float] | None = None,
    query_range: tuple[float, float] | None = None,
) -> Curve:
    """Test MSE (mean, 95% interval) over ``n_tasks`` held-out tasks after 0..max_steps.

    A bare model adapts all its weights with ``inner_lr`` (default 0.01); a
    :class:`Learner` (or a :class:`~metalib.recipes.base.Run`) adapts as it was trained
    (its learned step sizes, its ``adapt_only``) unless ``inner_lr`` overrides the step
    size. A learner with an update rule (LSTM meta-learner) takes ``max_steps`` steps of
    its rule, which keeps a memory across them. ``support_range`` and ``query_range``
    restrict where the support and query points are drawn (the extrapolation demo).
    """
    model = learner_of(model) if isinstance(model, Run) else model
    chosen = model if isinstance(model, Learner) else None
    net = chosen.model if chosen else model
    if chosen and chosen.rule is not None and inner_lr is not None:
        raise ValueError(
            f"inner_lr={inner_lr}: the LSTM meta-learner's steps are its learned rule's, "
            "not a step size's; leave inner_lr None."
        )
    step = inner_lr if inner_lr is not None else (chosen.inner_lr if chosen else 0.01)
    tasks = held_out_tasks(
        n_tasks, k_shot=k_shot, seed=seed, support_range=support_range, query_range=query_range
    )
    dev = next(net.parameters()).device
    if chosen and chosen.rule is not None:
        per_task = lstm_meta.losses_by_step(
            net, parameters_of(net), chosen.rule, tasks.to(dev), max_steps=max_steps
        )
        return training.curve(per_task)
    return training.evaluate(
        net,
        parameters_of(net),
        tasks.to(dev),
        inner_lr=step,
        max_steps=max_steps,
        adapt_only=chosen.adapt_only if chosen else None,
    )


def validation_mse(learner: Learner) -> float:
    """What ``validate_every`` selects on: the MSE over :data:`VALIDATION_TASKS` validation
    tasks at K = 5 after :data:`VALIDATION_STEPS` steps, adapting as at test. Tasks drawn
    with ``VALIDATION_SEED``; a task whose loss diverged counts as infinitely bad."""
    curve = mse_by_step(
        learner,
        k_shot=5,
        n_tasks=VALIDATION_TASKS,
        max_steps=VALIDATION_STEPS,
        seed=VALIDATION_SEED,
    )
    value = float(curve.mean[VALIDATION_STEPS])
    return value if math.isfinite(value) else math.inf


REPORT_STEPS = (0, 1, 5, 10)  # the steps a sidecar and `evaluate` report
EVALUATE_OPTIONS = ("k_shot", "tasks", "inner_lr")
TEST_EPISODES = None  # sinusoid recipes are tested on tasks, not episodes


def evaluate(
    run: Run, *, k_shot: int = 5, tasks: int = 1000, inner_lr: float | None = None
) -> dict[str, Any]:
    """What ``python -m metalib evaluate`` prints: test MSE after 0, 1, 5 and 10 steps."""
    chosen = learner_of(run)
    curve = mse_by_step(
        chosen, k_shot=k_shot, n_tasks=tasks, inner_lr=inner_lr, max_steps=max(REPORT_STEPS)
    )
    learned = isinstance(chosen.inner_lr, dict) and inner_lr is None
    step: str | float = run.config.inner_lr if inner_lr is None else inner_lr
    if learned:
        step = "learned (Meta-SGD)"
    if chosen.rule is not None:
        step = "learned rule (LSTM meta-learner)"
    return {
        "k_shot": k_shot,
        "tasks": tasks,
        "inner_lr": step,
        "mse": curve.to_dict(REPORT_STEPS),
    }


def metrics(run: Run) -> dict[str, Any]:
    """The test metrics a checkpoint's sidecar records: K = 5, 1,000 held-out tasks."""
    curve = mse_by_step(run, k_shot=5, n_tasks=1000, max_steps=max(REPORT_STEPS))
    return {"test_mse_k5_1000_tasks": curve.to_dict(REPORT_STEPS)}


def state_dict(run: Run) -> dict[str, Tensor]:
    """What a checkpoint keeps: the network's weights and any learned step sizes or rule."""
    return {**run.model.state_dict(), **run.params}


def restore(
    config: SinusoidConfig, state: dict[str, Tensor], device: torch.device
) -> tuple[SinusoidMLP, dict[str, Tensor]]:
    """The network and trained tensors of a checkpoint's ``state`` (raises ``ValueError``)."""
    fresh = make_learner(config, device)
    weights, rule = lstm_meta.from_state(state)
    weights, lrs = meta_sgd.from_state(weights)
    load_weights(fresh.model, weights, f"SinusoidMLP{config.hidden}")
    if isinstance(fresh.inner_lr, dict):
        meta_sgd.check_inner_lr(lrs, fresh.params)
    elif lrs:
        raise ValueError(f"it has learned step sizes, which recipe {config.recipe} does not learn")
    if fresh.rule is not None:
        if lstm_meta.hidden_size(rule) != config.rule_hidden:
            raise ValueError(
                f"its update rule has {lstm_meta.hidden_size(rule)} hidden units, its config "
                f"says rule_hidden={config.rule_hidden}"
            )
    elif rule:
        raise ValueError(f"it has an update rule, which recipe {config.recipe} does not learn")
    params = {
        **fresh.params,
        **meta_sgd.to_state_refs({k: v.to(device) for k, v in lrs.items()}),
        **lstm_meta.to_state_refs({k: v.to(device) for k, v in rule.items()}),
    }
    return fresh.model, params


def outer_steps_per_second(
    meta_loss_fn,
    config: SinusoidConfig | None = None,
    *,
    seconds: float = 5.0,
    device: torch.device | str | None = None,
) -> float:
    """Outer steps per second of ``meta_loss_fn`` (``maml.meta_loss`` or ``maml.meta_loss_loop``).

    Runs the setting of ``config`` (default: the shipped recipe) for at least ``seconds``
    and three steps, after three warm-up steps: sample a meta-batch, the meta-loss, backward,
    one Adam step. Used by chapter 03 and ``benchmarks/sinusoid_training_speed.py``.
    """
    checks.positive_number("seconds", seconds)
    config = config or SinusoidConfig()
    dev = runtime.device(device)
    learner = make_learner(config, dev)
    step_loss = step_loss_fn(learner, dev, meta_loss_fn=meta_loss_fn)
    optimizer = torch.optim.Adam(learner.params.values(), lr=config.outer_lr)

    def step() -> None:
        loss = step_loss(0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    count, start = 0, time.perf_counter()
    while count < 3 or time.perf_counter() - start < seconds:
        step()
        count += 1
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return count / (time.perf_counter() - start)
