"""Few-shot classification on Omniglot with MAML and FOMAML: configuration, training, accuracy.

The recipe is MAML's (Finn et al. 2017, section 5.2, arXiv:1703.03400): the 4-block
:class:`~metalib.models.ConvNet` with transductive batch norm, cross-entropy in the inner
and outer loop, and per-step query accuracy over held-out episodes with a 95% interval.
:meth:`OmniglotConfig.paper` gives the paper's settings: 5-way with inner step 0.4, one
inner step in training and three at test, 32 tasks per outer step; 20-way with 0.1, five
steps and 16 tasks; Adam with β = 0.001 for 60,000 outer steps. Episodes come from
:class:`~metalib.data.episodes.EpisodeSampler` on the training device, and the meta-loss
is :func:`~metalib.algorithms.maml.meta_loss` (``vmap`` over the meta-batch), as for
sinusoids. Taught in ``05_maml_omniglot``.
"""

from __future__ import annotations

import dataclasses
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checkpoints, checks, files, runtime
from metalib.algorithms import maml
from metalib.data import episodes, omniglot, splits
from metalib.models import ConvNet, clone_parameters, parameters_of
from metalib.training import (
    Callback,
    Curve,
    History,
    accuracy,
    check_outer_lr,
    evaluate,
    train_loop,
)

METHODS = ("maml", "fomaml")
TEST_SEED = 2017  # every evaluation draws the same test episodes
TEST_K_QUERY = 15  # query images per class in test episodes


@dataclass(frozen=True)
class OmniglotConfig:
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

    def __post_init__(self) -> None:
        checks.one_of("method", self.method, METHODS)
        minimums = {"n_way": 2, "k_shot": 1, "k_query": 1, "meta_batch_size": 1}
        for name in ("meta_steps", "inner_steps", "test_inner_steps", "seed", *minimums):
            checks.count(name, getattr(self, name), minimums.get(name, 0))
        maml.check_hyperparameters(inner_lr=self.inner_lr, inner_steps=self.inner_steps)
        check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)
        if self.method == "fomaml" and not self.first_order:
            raise ValueError("method='fomaml' is first-order by definition: set first_order=True.")
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

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class TrainedClassifier(NamedTuple):
    config: OmniglotConfig
    model: ConvNet
    params: dict[str, Tensor]
    history: History
    device: torch.device


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


def train_omniglot(
    config: OmniglotConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    callback: Callback | None = None,
    progress: bool = True,
    resume_path: str | os.PathLike[str] | None = None,
    save_every: int = 200,
    params: dict[str, Tensor] | None = None,
    model: nn.Module | None = None,
) -> TrainedClassifier:
    """Meta-train a ConvNet with ``config`` on the training classes.

    Args:
        model: the network whose parameters are trained (for example a ConvNet with
            other layers swapped in); default: ``config.model()`` seeded with ``config.seed``.
        params: leaf tensors to start from and update in place (for example to
            evaluate them from a callback while training runs); default: a copy of the
            model's parameters.
        resume_path: a file for the training state (parameters, Adam's state, the
            episode generator's state, the losses so far), written atomically every
            ``save_every`` steps, at the end and on Ctrl-C. If it exists when training
            starts, training continues from it, and ends with the same parameters as an
            uninterrupted run with the same seed (exactly on a CPU).

    Raises:
        ValueError: if ``resume_path`` holds the state of a different configuration, or
            ``params`` do not have the model's parameter names.
    """
    dev = runtime.device(None if device is None else str(device))
    data = omniglot.load() if data is None else data
    sampler = sampler_for(data, config, split="train", device=dev)
    torch.manual_seed(config.seed)
    model = (config.model() if model is None else model).to(dev)
    if params is None:
        params = clone_parameters(parameters_of(model))
    elif set(params) != set(parameters_of(model)):
        raise ValueError(
            f"params must have the model's parameter names: {sorted(parameters_of(model))}."
        )
    generator = torch.Generator(device=dev).manual_seed(config.seed)
    boundary: list = [0, generator.get_state()]  # generator state before sampling step boundary[0]

    def step_loss(step: int) -> Tensor:
        boundary[:] = [step, generator.get_state()]
        batch = sampler.sample(config.meta_batch_size, generator=generator)
        if not config.transductive_bn:  # running statistics of θ over the meta-batch's queries
            model.update_running_stats(params, batch.x_query.flatten(0, 1))
        return maml.meta_loss(
            model,
            params,
            batch,
            loss_fn=F.cross_entropy,
            inner_lr=config.inner_lr,
            inner_steps=config.inner_steps,
            first_order=config.first_order,
        )

    resume, save_state = None, None
    if resume_path is not None:
        path = Path(resume_path)
        resume = _read_resume(path, config, model, params, generator) if path.is_file() else None

        def save_state(loop: dict) -> None:
            at_boundary = boundary[0] == loop["step"]
            blob = {
                "config": config.to_dict(),
                "params": {k: v.detach().cpu() for k, v in params.items()},
                "buffers": {k: v.cpu() for k, v in model.named_buffers()},
                "generator": boundary[1] if at_boundary else generator.get_state(),
                "loop": loop,
            }
            buffer = io.BytesIO()
            torch.save(blob, buffer)
            files.atomic_write(path, buffer.getvalue())

    history = train_loop(
        step_loss,
        params,
        meta_steps=config.meta_steps,
        outer_lr=config.outer_lr,
        outer_lr_schedule=config.outer_lr_schedule,
        callback=callback,
        progress=progress,
        description=config.recipe,
        resume=resume,
        save_state=save_state,
        save_every=save_every,
    )
    return TrainedClassifier(config, model, params, history, dev)


def _read_resume(path: Path, config: OmniglotConfig, model, params: dict, generator) -> dict:
    """Restore parameters and generator from a training state; return the loop's state."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt files
        raise ValueError(
            f"training state {path} cannot be read ({error}): delete it to start afresh."
        ) from error
    if blob.get("config") != config.to_dict():
        raise ValueError(
            f"training state {path} belongs to another configuration ({blob.get('config')}): "
            "delete it or pass the same hyperparameters."
        )
    with torch.no_grad():
        for name, value in blob["params"].items():
            params[name].copy_(value)
        for name, value in model.named_buffers():
            value.copy_(blob["buffers"][name])
    generator.set_state(blob["generator"])
    return blob["loop"]


def save_classifier(trained: TrainedClassifier, path, *, metrics: dict, command: str | None):
    """Write ``PATH.pt`` and ``PATH.json`` (see :mod:`metalib.checkpoints`)."""
    return checkpoints.save(
        path,
        recipe=trained.config.recipe,
        config=trained.config.to_dict(),
        state_dict={**trained.params, **dict(trained.model.named_buffers())},
        metrics=metrics,
        device=runtime.describe_device(trained.device),
        wall_time_s=round(trained.history.seconds, 2),
        command=command,
    )


def load_classifier(
    path, *, device: torch.device | str = "cpu"
) -> tuple[OmniglotConfig, ConvNet, dict]:
    """``(config, model, params)`` from a checkpoint written by :func:`save_classifier`.

    Raises:
        FileNotFoundError, ValueError: as :func:`metalib.checkpoints.load`, or if the
            checkpoint is not an Omniglot classifier.
    """
    blob = checkpoints.load(path)
    if not blob["recipe"].endswith("-omniglot"):
        raise ValueError(f"checkpoint {path} holds recipe {blob['recipe']!r}, not an Omniglot one.")
    config = OmniglotConfig(**blob["config"])
    model = config.model()
    if set(blob["state_dict"]) != set(model.state_dict()):
        raise ValueError(f"checkpoint {path} does not hold a ConvNet's parameters.")
    model.load_state_dict(blob["state_dict"])
    model.to(device)
    params = {k: v.detach().clone() for k, v in parameters_of(model).items()}
    return config, model, params


def evaluate_omniglot(
    model: ConvNet,
    params: dict[str, Tensor],
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 600,
    inner_lr: float = 0.4,
    max_steps: int = 3,
    seed: int = TEST_SEED,
) -> Curve:
    """Query accuracy (mean, 95% interval) after 0..``max_steps`` inner steps.

    Args:
        sampler: test episodes (``split="test"``); its ``n_way`` must be the model's.
        n_episodes: episodes to average over (600 in the MAML paper's tables).
    """
    if sampler.n_way != model.n_way:
        raise ValueError(
            f"the model has {model.n_way} outputs but the episodes are {sampler.n_way}-way: "
            f"evaluate it with n_way={model.n_way}."
        )
    generator = torch.Generator(device=sampler.device).manual_seed(seed)
    test = sampler.sample(n_episodes, generator=generator)
    mode = model.training
    model.eval()  # running statistics, if the model keeps them; transductive BN ignores it
    try:
        return evaluate(
            model,
            params,
            test,
            loss_fn=F.cross_entropy,
            inner_lr=inner_lr,
            max_steps=max_steps,
            metric_fn=accuracy,
        )
    finally:
        model.train(mode)
