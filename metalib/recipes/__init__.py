"""Every recipe of the course, by name: ``RECIPES["protonet-omniglot"]``.

A recipe family is one module here, named after what it trains, and every family module
exposes the same few names:

- ``RECIPES``: its recipe names with one line of description each;
- a frozen dataclass config (``SinusoidConfig``, ``MetricConfig``, ...) based on
  :class:`~metalib.recipes.base.Config`, whose ``FLAGS`` are the command line of ``train``;
- ``config(recipe, **overrides)``: the recipe's config; ``build(config)``: a fresh network;
- ``train(config, *, device, callback, progress, resume_path, save_every)`` → :class:`Run`;
- ``evaluate(run, **options)``: what ``python -m metalib evaluate`` prints, with
  ``EVALUATE_OPTIONS`` naming the options that apply, and ``metrics(run)``: what a
  checkpoint's sidecar records (over ``TEST_EPISODES`` episodes, for Omniglot);
- ``state_dict(run)`` and ``restore(config, state, device)``: what a checkpoint keeps,
  and the network (and trained tensors) back from it.

A new recipe is one module plus one line in :data:`FAMILIES`. :func:`save` writes any run
as a checkpoint and :func:`load` reads any checkpoint back as a :class:`Run`.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import torch

from metalib import checkpoints, runtime
from metalib.recipes import (
    base,
    cnp_sinusoid,
    maml_omniglot,
    mann_omniglot,
    metric_omniglot,
    sinusoid,
    transfer_omniglot,
)
from metalib.recipes.base import Run

FAMILIES: tuple[ModuleType, ...] = (
    sinusoid,
    maml_omniglot,
    metric_omniglot,
    transfer_omniglot,
    mann_omniglot,
    cnp_sinusoid,
)
RECIPES: dict[str, ModuleType] = {name: f for f in FAMILIES for name in f.RECIPES}


def family_of(recipe: str, *, source: str = "") -> ModuleType:
    """The module that trains ``recipe``.

    Raises:
        ValueError: if no module does (naming ``source``, e.g. the checkpoint).
    """
    if recipe not in RECIPES:
        where = f"{source} holds " if source else ""
        raise ValueError(
            f"{where}recipe {recipe!r}, which this course does not know; known: {sorted(RECIPES)}."
        )
    return RECIPES[recipe]


def description(recipe: str) -> str:
    """One line on what ``recipe`` trains."""
    return family_of(recipe).RECIPES[recipe]


def save(
    run: Run,
    path: str | os.PathLike[str],
    *,
    metrics: dict | None = None,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Write ``run`` as ``PATH.pt`` and ``PATH.json``: what its family keeps of it, with
    ``metrics`` and the ``command`` that made it in the sidecar."""
    family = family_of(run.config.recipe)
    state = family.state_dict(run)
    return base.save(run, path, state_dict=state, metrics=metrics, command=command)


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: torch.device | str | None = "cpu",
    family: ModuleType | None = None,
) -> Run:
    """Any checkpoint as a :class:`Run` (``history`` None, ``sidecar`` set), in eval mode.

    Args:
        name_or_path: a shipped name (``"sinusoid_maml"``), ``PATH``, ``PATH.pt`` or
            ``PATH.json``.
        family: the recipe family the checkpoint must belong to (e.g.
            ``recipes.metric_omniglot``); default: any.

    Raises:
        FileNotFoundError: if the ``.pt`` or ``.json`` file is missing.
        ValueError: naming the file and what to do, if it is corrupt, of another family,
            has settings its config does not know, or weights that do not fit.
    """
    pt_path = checkpoints.path_of(name_or_path)
    blob = checkpoints.load(pt_path)
    recipe = str(blob["recipe"])
    found = family_of(recipe, source=f"checkpoint {pt_path}")
    if family is not None and found is not family:
        raise ValueError(
            f"checkpoint {pt_path} holds recipe {recipe!r}, not one of "
            f"{sorted(family.RECIPES)}: load it with metalib.recipes.load or "
            "metalib.pretrained.load instead."
        )
    config_class = type(found.config(recipe))
    config = config_class.from_dict(blob["config"], source=f"checkpoint {pt_path}")
    if config.recipe != recipe:
        raise ValueError(f"checkpoint {pt_path} says recipe {recipe!r} but holds {config.recipe}.")
    dev = runtime.device(device)
    try:
        model, params = found.restore(config, blob["state_dict"], dev)
    except ValueError as error:
        raise ValueError(
            f"checkpoint {pt_path} cannot be used: {str(error).rstrip('.')}. Retrain it with "
            f"`python -m metalib train {recipe}`."
        ) from error
    return Run(config, model.eval(), params, None, dev, sidecar=blob["sidecar"])


__all__ = ["FAMILIES", "RECIPES", "Run", "description", "family_of", "load", "save"]
