"""What every recipe shares: a config base class, one run type, resumable training, saving.

A recipe family is one module of :mod:`metalib.recipes` (``sinusoid``, ``maml_omniglot``,
...). Each defines a frozen dataclass config that inherits :class:`Config`, and the same
few functions (see :mod:`metalib.recipes`); what they have in common is written here once:

- :class:`Config`: to and from a dict (unknown keys refused with ``ValueError``), the
  help text of each command-line flag, count checks.
- :class:`Run`: what ``train`` returns and :func:`metalib.recipes.load` gives back.
- :func:`fit`: :func:`~metalib.training.train_loop` on a recipe's settings, with a resume
  file. Stopped (Ctrl-C, a kill, a callback) and run again with the same file, training
  continues where it stopped and ends with the parameters of an uninterrupted run,
  bit for bit on a CPU. Given a :class:`Validation`, it scores the network on held-out
  classes every so many steps and ends with the best-scoring step's tensors.
- :func:`save`: a checkpoint pair (``PATH.pt``, ``PATH.json``) of a run.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from metalib import checkpoints, checks, files, runtime
from metalib.training import Callback, History, train_loop


class Flag(NamedTuple):
    """How a config field appears on the command line of ``train``.

    Attributes:
        help: one line for ``--help``.
        name: the flag, when it is not the field's name (``scheme`` is ``--split``).
        choices: allowed values; a dict maps each word to the field's value.
        methods: the methods the field applies to (None: all of the config's recipes).
    """

    help: str
    name: str | None = None
    choices: tuple[str, ...] | dict[str, Any] | None = None
    methods: tuple[str, ...] | None = None


class Config:
    """Base of every recipe's frozen dataclass config.

    A subclass lists its command-line flags in ``FLAGS`` (field name → :class:`Flag`);
    fields not listed there (such as ``method``) are fixed by the recipe.
    """

    FLAGS: ClassVar[dict[str, Flag]] = {}

    @property
    def recipe(self) -> str:
        raise NotImplementedError

    def check_counts(self, minimums: dict[str, int]) -> None:
        """Raise ``ValueError`` unless each named field is an int ≥ its minimum."""
        for name, minimum in minimums.items():
            checks.count(name, getattr(self, name), minimum)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "the config") -> Config:
        """The config that :meth:`to_dict` wrote, checked.

        Raises:
            ValueError: naming ``source``, for unknown keys or values the config refuses.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(
                f"{source} has settings {unknown} that {cls.__name__} does not know: it was "
                "written by another version of metalib; retrain it or remove them."
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**values)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{source} holds settings {cls.__name__} refuses ({error}): retrain it with "
                "`python -m metalib train`."
            ) from error


@dataclass
class Run:
    """A trained (or loaded) recipe: the same type for every family.

    Attributes:
        config: the recipe's config.
        model: the trained network, in eval mode.
        params: every trained tensor by name: the model's parameters (MAML's
            meta-parameters are trained apart from the model, as ``maml.adapt`` takes
            them, and copied into it at the end), plus Meta-SGD's step sizes
            (``inner_lr.<name>``).
        history: what training did; None for a loaded checkpoint.
        device: where the model lives.
        sidecar: the checkpoint's JSON sidecar; None for a run trained in this process.
    """

    config: Any
    model: nn.Module
    params: dict[str, Tensor]
    history: History | None
    device: torch.device
    sidecar: dict[str, Any] | None = None

    @property
    def finished(self) -> bool:
        """Whether training ran all of ``config.meta_steps``, or stopped because its
        validation score had stopped improving."""
        history = self.history
        if history is None:
            return False
        return history.converged or history.steps == self.config.meta_steps


class Validation(NamedTuple):
    """Model selection for :func:`fit`: ``score()`` every ``every`` steps and at the last.

    ``score`` (for example the accuracy over fixed episodes of the validation classes,
    never the test classes; higher is better, or lower with ``lower_is_better``, e.g. a
    validation error) must leave the training generator and the network's mode as it found
    them. Training ends with the tensors of the best-scoring step; ``History.selected``
    names it and its score under ``name``.

    With ``patience`` above 0, training also ends (complete, not interrupted) once that
    many checks in a row have not beaten the best score: early stopping.
    """

    every: int
    score: Callable[[], float]
    name: str = "val_accuracy"
    patience: int = 0
    lower_is_better: bool = False

    def beats(self, score: float, best: float) -> bool:
        """Whether ``score`` is better than ``best``."""
        return score < best if self.lower_is_better else score > best


PATIENCE_FLAG = Flag(  # the same ``--patience`` for every recipe that validates
    "stop early once this many validation checks in a row have not beaten the best "
    "(0: train all steps)"
)


def resume_path_of(path: str | os.PathLike[str]) -> Path:
    """``PATH.resume.pt``: where training to ``PATH`` keeps its state until it finishes."""
    pt_path, _ = checkpoints.paths(path)
    return pt_path.with_name(pt_path.name.removesuffix(".pt") + ".resume.pt")


def fit(
    step_loss: Callable[[int], Tensor],
    params: dict[str, Tensor],
    config: Any,
    *,
    model: nn.Module,
    generator: torch.Generator,
    callback: Callback | None = None,
    progress: bool = True,
    resume_path: str | os.PathLike[str] | None = None,
    save_every: int = 200,
    validation: Validation | None = None,
    project: Callable[[], None] | None = None,
) -> History:
    """Adam on ``params`` for ``config.meta_steps`` steps of ``step_loss``, resumably.

    Args:
        step_loss: the loss of outer step ``step``, sampling its batch with ``generator``.
        params: leaf tensors, updated in place.
        config: gives ``meta_steps``, ``outer_lr``, ``outer_lr_schedule``, ``recipe``,
            for the halving schedule ``halve_every``, and ``max_grad_norm`` if it clips.
        model: the network (its buffers, e.g. running statistics, are saved too).
        generator: the CPU generator every batch is drawn with.
        resume_path: a file for the training state (parameters, buffers, Adam's state,
            the generators' states, the losses so far), written atomically every
            ``save_every`` steps, at the end and on Ctrl-C. If it exists, training
            continues from it.
        validation: score the network every ``validation.every`` steps and at the last
            step, and end with the best step's parameters and buffers (the scores and the
            best step's tensors are part of the resume state); with ``validation.patience``,
            stop once that many checks in a row have not improved on the best
            (``History.converged``).
        project: called after every update, before validation and saving, to put the
            parameters back into their allowed set in place (projected gradient descent,
            e.g. Meta-SGD's step sizes kept in [0, clip_steps]).

    Raises:
        ValueError: if ``generator`` is not a CPU generator, or ``resume_path`` is
            unreadable or holds another configuration's state.
    """
    if generator.device.type != "cpu":
        raise ValueError(
            f"the sampling generator is on {generator.device}: use torch.Generator() (CPU), "
            "so that a seed draws the same batches on every device."
        )
    # What step ``start[0]`` began from: a stop inside that step (before its update) saves
    # these, so that the step is drawn and run again from the same place on resume.
    start: list = [0, generator.get_state(), torch.get_rng_state(), {}]

    def step(index: int) -> Tensor:
        buffers = {k: v.detach().clone() for k, v in model.named_buffers()}  # no device sync
        start[:] = [index, generator.get_state(), torch.get_rng_state(), buffers]
        return step_loss(index)

    chosen: dict[str, Any] = {"scores": [], "best": None}  # what validation found so far

    def validate(step: int) -> None:
        done = step + 1
        due = validation is not None and (done % validation.every == 0 or done == config.meta_steps)
        if not due or any(s == done for s, _ in chosen["scores"]):
            return
        score = float(validation.score())
        best = chosen["best"]
        if best is None or validation.beats(score, best["score"]):
            best = {
                "step": done,
                "score": score,
                "params": {k: v.detach().cpu().clone() for k, v in params.items()},
                "buffers": {k: v.detach().cpu().clone() for k, v in model.named_buffers()},
            }
        chosen.update(scores=[*chosen["scores"], [done, score]], best=best)  # all at once

    def converged() -> bool:
        """Whether ``validation.patience`` checks in a row have not beaten the best."""
        best = chosen["best"]
        if validation is None or not validation.patience or best is None:
            return False
        since = sum(1 for done, _ in chosen["scores"] if done > best["step"])
        return since >= validation.patience

    def stop(step: int, loss: float) -> bool:
        return converged() or (callback is not None and bool(callback(step, loss)))

    def after_step(step: int) -> None:
        if project is not None:
            with torch.no_grad():
                project()
        validate(step)

    resume, save_state = None, None
    if resume_path is not None:
        path = Path(resume_path)
        if path.is_file():
            resume, found = _read_state(path, config, model, params, generator)
            chosen.update(found or {})
            if resume["step"] > 0:
                validate(resume["step"] - 1)  # a stop while it validated that step

        def save_state(loop: dict) -> None:
            inside = start[0] == loop["step"]  # stopped inside that step: save its start
            buffers = {k: v.detach().cpu() for k, v in model.named_buffers()}
            blob = {
                "recipe": config.recipe,
                "config": config.to_dict(),
                "params": {k: v.detach().cpu() for k, v in params.items()},
                "buffers": {k: v.cpu() for k, v in start[3].items()} if inside else buffers,
                "generator": start[1] if inside else generator.get_state(),
                "rng": start[2] if inside else torch.get_rng_state(),
                "loop": loop,
                "validation": chosen,
            }
            buffer = io.BytesIO()
            torch.save(blob, buffer)
            files.atomic_write(path, buffer.getvalue())

    # A state saved after patience ran out (but before the checkpoint was written) is done.
    done_already = resume is not None and converged()
    history = train_loop(
        step,
        params,
        meta_steps=resume["step"] if done_already else config.meta_steps,
        outer_lr=config.outer_lr,
        outer_lr_schedule=config.outer_lr_schedule,
        halve_every=getattr(config, "halve_every", 2_000),
        max_grad_norm=getattr(config, "max_grad_norm", 0.0),
        callback=stop,
        progress=progress,
        description=config.recipe,
        resume=resume,
        save_state=save_state,
        save_every=save_every,
        after_step=None if validation is None and project is None else after_step,
    )
    history.validation = [list(pair) for pair in chosen["scores"]]
    history.converged = converged()
    history.stopped_early = history.stopped_early and not history.converged
    best = chosen["best"]
    if (
        validation is not None
        and best is not None
        and (history.converged or history.steps == config.meta_steps)
    ):
        buffers = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in best["params"].items():
                params[name].copy_(value)
            for name, value in best["buffers"].items():
                buffers[name].copy_(value)
        history.selected = {"step": best["step"], validation.name: best["score"]}
    return history


def deadline(seconds: float) -> Callback:
    """A training callback that stops at the first step boundary after ``seconds``."""
    checks.positive_number("deadline", seconds)
    end = time.monotonic() + seconds
    return lambda step, loss: time.monotonic() >= end


def _read_state(
    path: Path, config, model: nn.Module, params: dict, generator
) -> tuple[dict, dict | None]:
    """Restore parameters, buffers and generators from a training state; return the loop's
    state and what validation had found (None in a state written without it)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        loop = blob["loop"]
    except Exception as error:  # torch raises several types for corrupt files
        raise ValueError(
            f"training state {path} cannot be read ({error}): delete it to start afresh."
        ) from error
    if "recipe" not in blob or "rng" not in blob:
        raise ValueError(
            f"training state {path} was written by an earlier version of metalib: delete it "
            "to start afresh."
        )
    saved = blob.get("config", {})
    defaults = type(config)().to_dict()  # settings added since the state was written
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    if blob["recipe"] != config.recipe or saved != config.to_dict():
        raise ValueError(
            f"training state {path} belongs to another configuration ({blob.get('recipe')}, "
            f"{blob.get('config')}): delete it or pass the same hyperparameters."
        )
    buffers = dict(model.named_buffers())
    if set(blob["params"]) != set(params) or set(blob["buffers"]) != set(buffers):
        raise ValueError(f"training state {path} holds other tensors than this model's.")
    with torch.no_grad():
        for name, value in blob["params"].items():
            params[name].copy_(value)
        for name, value in blob["buffers"].items():
            buffers[name].copy_(value)
    generator.set_state(blob["generator"])
    torch.set_rng_state(blob["rng"])
    return loop, blob.get("validation")


def save(
    run: Run,
    path: str | os.PathLike[str],
    *,
    state_dict: dict[str, Tensor],
    metrics: dict[str, Any] | None = None,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Write ``run`` as ``PATH.pt`` and ``PATH.json`` (see :mod:`metalib.checkpoints`).

    A run trained with a :class:`Validation` records its scores, the step it kept and
    whether its patience ended training (``converged``) under ``metrics["selection"]``.
    """
    history = run.history
    if history is not None and history.validation:
        selection = {  # a non-finite score (a diverged validation error) is written as null
            "scores": [[step, _finite(score)] for step, score in history.validation],
            "kept": history.selected
            and {
                key: _finite(value) if isinstance(value, float) else value
                for key, value in history.selected.items()
            },
            "converged": history.converged,
        }
        metrics = {**(metrics or {}), "selection": selection}
    return checkpoints.save(
        path,
        recipe=run.config.recipe,
        config=run.config.to_dict(),
        state_dict=state_dict,
        metrics=metrics,
        device=(
            runtime.describe_parts(history.parts)
            if history is not None and history.parts
            else runtime.describe_device(run.device)
        ),
        wall_time_s=None if run.history is None else round(run.history.seconds, 2),
        command=command,
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def restore_module(
    model: nn.Module, state_dict: dict[str, Tensor], device: torch.device, what: str
) -> tuple[nn.Module, dict[str, Tensor]]:
    """``model`` with the weights of ``state_dict``, on ``device`` in eval mode, and its
    parameters: the ``restore`` of a family whose run trains the model's own parameters."""
    load_weights(model, state_dict, what)
    model.to(device).eval()
    return model, dict(model.named_parameters())


def load_weights(model: nn.Module, state_dict: dict[str, Tensor], what: str) -> None:
    """``model.load_state_dict(state_dict)``, strictly, with a ``ValueError`` on mismatch."""
    expected = set(model.state_dict())
    if set(state_dict) != expected:
        missing, extra = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
        raise ValueError(f"it does not hold a {what}'s weights (missing {missing}, extra {extra})")
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(f"its weights do not fit a {what}: {error}") from error
