"""``maml-``, ``fomaml-`` and ``lstm-meta-omniglot``: few-shot classification by gradient steps.

The recipe is MAML's (Finn et al. 2017, section 5.2, arXiv:1703.03400): the 4-block
:class:`~metalib.models.ConvNet` with transductive batch norm, cross-entropy in the inner
and outer loop, and per-step query accuracy over held-out episodes with a 95% interval.
:meth:`OmniglotConfig.paper` gives the paper's settings: 5-way with inner step 0.4, one
inner step in training and three at test, 32 tasks per outer step; 20-way with 0.1, five
steps and 16 tasks; Adam with β = 0.001 for 60,000 outer steps. Episodes come from
:class:`~metalib.data.episodes.EpisodeSampler` (indices drawn on the CPU, images gathered on
the training device), and the meta-loss
is :func:`~metalib.algorithms.maml.meta_loss` (``vmap`` over the meta-batch), as for
sinusoids. Taught in ``06_maml_omniglot``.

``lstm-meta-omniglot`` replaces MAML's inner step by the learned update rule of
:mod:`metalib.algorithms.lstm_meta` (Ravi & Larochelle 2017; chapter 04), first order as in
its paper, with the rule's tensors beside the network's in the checkpoint. It takes as many
steps in training as at test (5 by default), because its rule learns what to do at each
step; the rule's first steps start as SGD with step ``inner_lr``. It is a recipe for a GPU:
every step of every task runs the rule's LSTM over all of the network's 113,000 weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checks, runtime, training
from metalib.algorithms import lstm_meta, maml
from metalib.data import episodes, omniglot, splits
from metalib.evaluation import (
    TEST_K_QUERY,
    TEST_SEED,
    VALIDATION_SEED,
    test_generator,
    validation_episodes,
    validation_sampler,
)
from metalib.models import ConvNet, clone_parameters, parameters_of
from metalib.recipes.base import PATIENCE_FLAG, Config, Flag, Run, Validation, fit, load_weights
from metalib.training import Curve, accuracy, check_outer_lr

METHODS = ("maml", "fomaml", "lstm-meta")
RECIPES = {
    "maml-omniglot": "MAML on Omniglot (Finn et al. 2017, section 5.2), the paper's settings",
    "fomaml-omniglot": "first-order MAML on Omniglot",
    "lstm-meta-omniglot": "the LSTM meta-learner (Ravi & Larochelle 2017) on Omniglot, for a GPU",
}
LSTM_META_STEPS = 5  # the learned rule's steps, in training and at test


@dataclass(frozen=True)
class OmniglotConfig(Config):
    """Hyperparameters of an Omniglot run. Defaults: the paper's 5-way 1-shot MAML."""

    method: str = "maml"
    n_way: int = 5
    k_shot: int = 1
    k_query: int = 15  # query images per class in training episodes
    meta_batch_size: int = 32
    meta_steps: int = 60_000
    inner_lr: float = 0.4
    inner_steps: int = 1
    test_inner_steps: int = 3
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"
    first_order: bool = False
    scheme: str = "vinyals"
    downsample: str = "stride"
    transductive_bn: bool = True  # False: running statistics at test time
    seed: int = 0
    validate_every: int = 2_000  # steps between validation scores (vinyals only); 0: never
    validation_episodes: int = 200
    patience: int = 0  # checks without a better score before training stops; 0: never
    rule_hidden: int = 20  # lstm-meta: units of the rule's coordinate-wise LSTM (the paper's)

    FLAGS: ClassVar[dict[str, Flag]] = {
        "n_way": Flag("classes per episode"),
        "k_shot": Flag("support images per class"),
        "k_query": Flag("query images per class in training episodes"),
        "meta_batch_size": Flag("tasks per outer step (paper: 32 at 5-way, 16 at 20-way)"),
        "meta_steps": Flag("outer steps"),
        "inner_lr": Flag("inner step size α (paper: 0.4 at 5-way, 0.1 at 20-way)"),
        "inner_steps": Flag("inner gradient steps in training (paper: 1 at 5-way, 5 at 20-way)"),
        "test_inner_steps": Flag("inner steps at test time (paper: 3 at 5-way, 5 at 20-way)"),
        "outer_lr": Flag("Adam step size β"),
        "outer_lr_schedule": Flag("β over training", choices=training.SCHEDULES),
        "first_order": Flag("drop second-order terms", methods=("maml", "lstm-meta")),
        "scheme": Flag("class split", name="split", choices=splits.SCHEMES),
        "downsample": Flag("how the blocks downsample", choices=("stride", "pool")),
        "transductive_bn": Flag(
            "batch-norm statistics of each batch (the paper) or running statistics at test time",
            name="batch-norm",
            choices={"transductive": True, "running": False},
        ),
        "seed": Flag("seed for weights and episode sampling"),
        "validate_every": Flag(
            "steps between accuracy checks (after the test-time steps) on the vinyals "
            "validation classes; training keeps the best step (0: keep the last; lake has none)"
        ),
        "validation_episodes": Flag("test-shaped episodes of the validation classes per check"),
        "patience": PATIENCE_FLAG,
        "rule_hidden": Flag(
            "units of the update rule's coordinate-wise LSTM", methods=("lstm-meta",)
        ),
    }

    def __post_init__(self) -> None:
        checks.one_of("method", self.method, METHODS)
        minimums = {"n_way": 2, "k_shot": 1, "k_query": 1, "meta_batch_size": 1}
        self.check_counts({"meta_steps": 0, "inner_steps": 0, "test_inner_steps": 0, "seed": 0})
        self.check_counts(minimums)
        self.check_counts({"validate_every": 0, "validation_episodes": 2, "patience": 0})
        self.check_counts({"rule_hidden": 1})
        maml.check_hyperparameters(inner_lr=self.inner_lr, inner_steps=self.inner_steps)
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)
        if self.method == "fomaml" and not self.first_order:
            raise ValueError("method='fomaml' is first-order by definition: set first_order=True.")
        if self.method == "lstm-meta":
            if not 0 < self.inner_lr < 1:
                raise ValueError(
                    f"inner_lr={self.inner_lr} is the rule's first input gate, a sigmoid: "
                    "choose it in (0, 1), e.g. 0.4."
                )
            if self.test_inner_steps != self.inner_steps:
                raise ValueError(
                    f"test_inner_steps={self.test_inner_steps} must equal inner_steps="
                    f"{self.inner_steps}: the learned rule is tested for the steps it learned."
                )
        elif self.rule_hidden != 20:
            raise ValueError(
                f"rule_hidden={self.rule_hidden} sizes a learned update rule "
                f"(method='lstm-meta'), not method={self.method!r}: leave it at 20."
            )
        if not isinstance(self.transductive_bn, bool):
            raise ValueError(f"transductive_bn={self.transductive_bn!r} must be True or False.")
        self.model()  # validates downsample

    @classmethod
    def paper(cls, n_way: int = 5, k_shot: int = 1, **overrides: Any) -> OmniglotConfig:
        """Finn et al. 2017's setting for ``n_way``-way ``k_shot``-shot Omniglot."""
        if n_way == 5:
            base = {"inner_lr": 0.4, "inner_steps": 1, "test_inner_steps": 3, "meta_batch_size": 32}
        elif n_way == 20:
            base = {"inner_lr": 0.1, "inner_steps": 5, "test_inner_steps": 5, "meta_batch_size": 16}
        else:
            raise ValueError(f"n_way={n_way!r}: the paper reports 5-way and 20-way only.")
        return cls(**{"n_way": n_way, "k_shot": k_shot, **base, **overrides})

    def model(self) -> ConvNet:
        """A fresh ConvNet of this configuration."""
        return ConvNet(self.n_way, downsample=self.downsample, transductive_bn=self.transductive_bn)

    @property
    def recipe(self) -> str:
        return f"{self.method}-omniglot"


def config(recipe: str, **overrides: Any) -> OmniglotConfig:
    """The paper's config of ``recipe`` for ``n_way`` and ``k_shot`` (default 5-way 1-shot)."""
    method = recipe.removesuffix("-omniglot")
    if method in ("fomaml", "lstm-meta"):
        overrides.setdefault("first_order", True)
    if method == "lstm-meta":
        overrides.setdefault("inner_steps", LSTM_META_STEPS)
        overrides.setdefault("test_inner_steps", overrides["inner_steps"])
    n_way, k_shot = overrides.pop("n_way", 5), overrides.pop("k_shot", 1)
    return OmniglotConfig.paper(n_way, k_shot, method=method, **overrides)


def build(config: OmniglotConfig) -> ConvNet:
    """A fresh ConvNet of ``config`` (seed it first for a reproducible start)."""
    return config.model()


def sampler_for(
    data: omniglot.Omniglot,
    config: OmniglotConfig,
    *,
    split: str,
    k_query: int | None = None,
    device: torch.device | str = "cpu",
) -> episodes.EpisodeSampler:
    """Episodes of ``config``'s shape from ``split`` of ``config.scheme``."""
    classes = splits.class_split(data, scheme=config.scheme, split=split)
    return episodes.EpisodeSampler(
        data,
        classes,
        n_way=config.n_way,
        k_shot=config.k_shot,
        k_query=config.k_query if k_query is None else k_query,
        device=device,
    )


def train(
    config: OmniglotConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    params: dict[str, Tensor] | None = None,
    model: nn.Module | None = None,
    **loop: Any,
) -> Run:
    """Meta-train a ConvNet with ``config`` on the training classes.

    Args:
        model: the network whose parameters are trained (for example a ConvNet with
            other layers swapped in); default: ``config.model()`` seeded with ``config.seed``.
        params: leaf tensors to start from and update in place (for example to
            evaluate them from a callback while training runs); default: a copy of the
            model's parameters.
        loop: goes to :func:`metalib.recipes.base.fit` (``callback``, ``resume_path``, ...).

    Raises:
        ValueError: if ``resume_path`` holds the state of a different configuration, or
            ``params`` do not have the model's parameter names.
    """
    dev = runtime.device(device)
    data = omniglot.load() if data is None else data
    sampler = sampler_for(data, config, split="train", device=dev)
    torch.manual_seed(config.seed)
    model = (build(config) if model is None else model).to(dev)
    if params is None:
        params = clone_parameters(parameters_of(model))
    elif set(params) != set(parameters_of(model)):
        raise ValueError(
            f"params must have the model's parameter names: {sorted(parameters_of(model))}."
        )
    generator = torch.Generator().manual_seed(config.seed)
    rule, trainable = None, params
    if config.method == "lstm-meta":
        drawn = lstm_meta.init_rule(
            config.rule_hidden, inner_lr=config.inner_lr, generator=generator
        )  # drawn before the batches, from the same seed
        rule = {k: v.to(dev).requires_grad_() for k, v in drawn.items()}
        trainable = {**params, **lstm_meta.to_state_refs(rule)}

    def step_loss(step: int) -> Tensor:
        batch = sampler.sample(config.meta_batch_size, generator=generator)
        if not config.transductive_bn:  # running statistics of θ over the meta-batch's queries
            model.update_running_stats(params, batch.x_query.flatten(0, 1))
        if rule is not None:
            return lstm_meta.meta_loss(
                model,
                params,
                rule,
                batch,
                loss_fn=F.cross_entropy,
                inner_steps=config.inner_steps,
                first_order=config.first_order,
            )
        return maml.meta_loss(
            model,
            params,
            batch,
            loss_fn=F.cross_entropy,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
        )

    validation, held_out = None, None
    if config.validate_every:  # None for a split without validation classes (lake)
        held_out = validation_sampler(
            data, scheme=config.scheme, n_way=config.n_way, k_shot=config.k_shot, device=dev
        )
    if held_out is not None:

        def val_accuracy() -> float:
            curve = accuracy_by_step(
                model,
                params,
                held_out,
                n_episodes=validation_episodes(config.validation_episodes),
                inner_lr=config.inner_lr,
                max_steps=config.test_inner_steps,
                seed=VALIDATION_SEED,
                rule=rule,
            )
            return curve.mean[config.test_inner_steps]

        validation = Validation(config.validate_every, val_accuracy, patience=config.patience)
    history = fit(
        step_loss,
        trainable,
        config,
        model=model,
        generator=generator,
        validation=validation,
        **loop,
    )
    if rule is not None:
        lstm_meta.hidden_size(rule)  # raises if training left non-finite tensors
    with torch.no_grad():  # the model itself holds the trained meta-parameters too
        for name, value in parameters_of(model).items():
            value.copy_(params[name])
    return Run(config, model.eval(), trainable, history, dev)


def accuracy_by_step(
    model: ConvNet,
    params: dict[str, Tensor],
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 600,
    inner_lr: float = 0.4,
    max_steps: int = 3,
    seed: int = TEST_SEED,
    rule: dict[str, Tensor] | None = None,
) -> Curve:
    """Query accuracy (mean, 95% interval) after 0..``max_steps`` inner steps.

    Args:
        sampler: test episodes (``split="test"``); its ``n_way`` must be the model's.
        n_episodes: episodes to average over (600 in the MAML paper's tables).
        rule: a learned update rule (LSTM meta-learner): its steps instead of gradient
            descent with ``inner_lr``.
    """
    if sampler.n_way != model.n_way:
        raise ValueError(
            f"the model has {model.n_way} outputs but the episodes are {sampler.n_way}-way: "
            f"evaluate it with n_way={model.n_way}."
        )
    test = sampler.sample(n_episodes, generator=test_generator(seed))
    images = sampler.n_way * (sampler.k_shot + sampler.k_query)  # per episode
    chunk = max(1, min(500, 40_000 // images))  # episodes adapted at once: bounded memory
    mode = model.training
    model.eval()  # running statistics, if the model keeps them; transductive BN ignores it
    try:
        if rule is not None:
            per_task = lstm_meta.losses_by_step(
                model,
                params,
                rule,
                test,
                loss_fn=F.cross_entropy,
                max_steps=max_steps,
                chunk=chunk,
                metric_fn=accuracy,
            )
            return training.curve(per_task)
        return training.evaluate(
            model,
            params,
            test,
            loss_fn=F.cross_entropy,
            inner_lr=inner_lr,
            max_steps=max_steps,
            metric_fn=accuracy,
            chunk=chunk,
        )
    finally:
        model.train(mode)


EVALUATE_OPTIONS = ("n_way", "k_shot", "episodes", "inner_lr")
TEST_EPISODES = 600  # test episodes in a sidecar's accuracy, as in the paper's tables


def evaluate(
    run: Run,
    *,
    data: omniglot.Omniglot | None = None,
    n_way: int | None = None,
    k_shot: int | None = None,
    episodes: int = TEST_EPISODES,
    inner_lr: float | None = None,
) -> dict[str, Any]:
    """What ``python -m metalib evaluate`` prints: accuracy after each test-time step."""
    config = run.config
    n_way = config.n_way if n_way is None else n_way
    k_shot = config.k_shot if k_shot is None else k_shot
    weights, rule = lstm_meta.from_state(run.params)
    if rule and inner_lr is not None:
        raise ValueError(
            f"inner_lr={inner_lr}: the LSTM meta-learner's steps are its learned rule's, "
            "which has no step size to change; leave inner_lr out."
        )
    data = omniglot.load() if data is None else data
    test_config = dataclasses.replace(config, n_way=n_way, k_shot=k_shot)
    sampler = sampler_for(data, test_config, split="test", k_query=TEST_K_QUERY, device=run.device)
    inner_lr = config.inner_lr if inner_lr is None else inner_lr
    last = config.test_inner_steps
    curve = accuracy_by_step(
        run.model,
        weights,
        sampler,
        n_episodes=episodes,
        inner_lr=inner_lr,
        max_steps=last,
        rule=rule or None,
    )
    return {
        "n_way": n_way,
        "k_shot": k_shot,
        "split": config.scheme,
        "episodes": episodes,
        "inner_lr": None if rule else inner_lr,  # the learned rule has no step size
        "inner_steps": last,
        "accuracy": {"mean": curve.mean[last], "ci95": curve.ci95[last]},
        "accuracy_by_step": curve.to_dict(range(last + 1)),
    }


def metrics(
    run: Run, *, data: omniglot.Omniglot | None = None, episodes: int = TEST_EPISODES
) -> dict[str, Any]:
    """The test metrics a sidecar records: accuracy after each test-time step."""
    result = evaluate(run, data=data, episodes=episodes)
    return {"test_episodes": episodes, "test_accuracy_by_step": result["accuracy_by_step"]}


def state_dict(run: Run) -> dict[str, Tensor]:
    """What a checkpoint keeps: the meta-parameters and the network's buffers."""
    return {**run.params, **dict(run.model.named_buffers())}


def restore(
    config: OmniglotConfig, state: dict[str, Tensor], device: torch.device
) -> tuple[ConvNet, dict[str, Tensor]]:
    """The network and meta-parameters (with a learned rule, under ``update_rule.``) of a
    checkpoint's ``state`` (raises ``ValueError``)."""
    weights, rule = lstm_meta.from_state(state)
    if (config.method == "lstm-meta") != bool(rule):
        has = "has" if rule else "has no"
        raise ValueError(f"it {has} an update rule, and recipe {config.recipe} is not so trained")
    if rule and lstm_meta.hidden_size(rule) != config.rule_hidden:
        raise ValueError(
            f"its update rule has {lstm_meta.hidden_size(rule)} hidden units, its config says "
            f"rule_hidden={config.rule_hidden}"
        )
    model = build(config)
    load_weights(model, weights, "ConvNet")
    model.to(device)
    params = {k: v.detach().clone() for k, v in parameters_of(model).items()}
    return model, {**params, **lstm_meta.to_state_refs({k: v.to(device) for k, v in rule.items()})}
