"""Any checkpoint, shipped or your own, as a ready model.

:func:`load` takes a shipped name (``"protonet_omniglot_1shot"``; :func:`shipped` lists
them) or a ``PATH.pt`` and returns what the recipe trained: a sinusoid
:class:`~metalib.recipes.sinusoid.Learner`, or for Omniglot a :class:`FewShotClassifier` that
scores query images against a support set you choose. Every checkpoint is read by
:func:`metalib.recipes.load`. With
:func:`metalib.data.omniglot.image_to_tensor` this classifies your own drawings::

    classifier = pretrained.load("protonet_omniglot_1shot")
    scores = classifier.scores(x_support, y_support, x_query)  # (n_query, n_way)

Used in ``notebooks/07_prototypical_networks.ipynb``.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalib import checkpoints, recipes
from metalib.algorithms import cnp, lstm_meta, maml, mann, transfer
from metalib.recipes import (
    cnp_sinusoid,
    mann_omniglot,
    metric_omniglot,
    sinusoid,
    transfer_omniglot,
)

shipped, path_of = checkpoints.shipped, checkpoints.path_of  # where the chapters look them up


def recorded_accuracy(name: str, setting: str) -> dict | None:
    """The test accuracy a shipped Omniglot checkpoint's sidecar records for ``setting``.

    Args:
        name: a shipped checkpoint's name, e.g. ``"protonet_omniglot_1shot"``.
        setting: e.g. ``"5-way 1-shot"``.

    Returns:
        ``{"mean", "ci95", "episodes"}``, or None if the checkpoint is not shipped or was
        not evaluated in that setting. MAML checkpoints record their own setting only, after
        each test-time step; this is the last step's.
    """
    if name not in shipped():
        return None
    sidecar = checkpoints.read_sidecar(path_of(name))
    metrics, config = sidecar["metrics"], sidecar["config"]
    if "test_accuracy" in metrics:  # the metric-based family and the transfer baseline
        return metrics["test_accuracy"].get(setting)
    by_step = metrics.get("test_accuracy_by_step")
    if not by_step or setting != f"{config['n_way']}-way {config['k_shot']}-shot":
        return None
    return {**by_step[max(by_step, key=int)], "episodes": metrics.get("test_episodes")}


class FewShotClassifier:
    """An Omniglot checkpoint that scores queries against a support set.

    Attributes:
        recipe: e.g. ``"protonet-omniglot"`` or ``"maml-omniglot"``.
        config: the training configuration (``MetricConfig`` or ``OmniglotConfig``).
        sidecar: the checkpoint's JSON sidecar (metrics, command, wall time).
        model: the network, in eval mode.
    """

    def __init__(self, recipe: str, config, model: nn.Module, params, sidecar: dict) -> None:
        self.recipe, self.config, self.model, self.sidecar = recipe, config, model, sidecar
        self._params = params  # MAML's initial parameters; None for the metric family

    def __repr__(self) -> str:
        shape = f"{self.config.n_way}-way {self.config.k_shot}-shot"
        return f"FewShotClassifier({self.recipe}, trained {shape})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def scores(self, x_support: Tensor, y_support: Tensor, x_query: Tensor) -> Tensor:
        """Class scores ``(n_query, n_way)`` of one episode; the highest is the prediction.

        Args:
            x_support: ``(n_support, 1, 28, 28)`` images in [0, 1], ink 1 (as from
                :func:`~metalib.data.omniglot.image_to_tensor` or an episode).
            y_support: ``(n_support,)`` labels ``0..n_way-1``, every label present.
            x_query: ``(n_query, 1, 28, 28)``.

        Metric recipes score by their own rule (ProtoNets: minus the squared distance to
        each prototype); MAML adapts on the support set for its test steps first (the LSTM
        meta-learner with its learned rule) and returns the adapted network's logits.
        """
        for name, x in (("x_support", x_support), ("x_query", x_query)):
            if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
                raise ValueError(f"{name} must be (n, 1, 28, 28) images; got {tuple(x.shape)}.")
        if y_support.shape != x_support.shape[:1]:
            raise ValueError(
                f"y_support {tuple(y_support.shape)} must hold one label per support image."
            )
        x_support, x_query = x_support.to(self.device), x_query.to(self.device)
        y_support = y_support.to(self.device)
        if self._params is None:
            with torch.no_grad():
                return metric_omniglot.episode_logits(
                    self.model, self.config, x_support[None], y_support[None], x_query[None]
                )[0]
        n_way = self.config.n_way
        if y_support.min() < 0 or y_support.max() >= n_way:
            raise ValueError(f"this MAML model is {n_way}-way: labels must lie in 0..{n_way - 1}.")
        weights, rule = lstm_meta.from_state(self._params)
        if rule:  # the LSTM meta-learner: its learned rule's steps
            adapted = lstm_meta.adapt(
                self.model,
                weights,
                rule,
                x_support,
                y_support,
                loss_fn=F.cross_entropy,
                inner_steps=self.config.test_inner_steps,
            )
        else:
            adapted = maml.adapt(
                self.model,
                weights,
                x_support,
                y_support,
                loss_fn=F.cross_entropy,
                inner_lr=self.config.inner_lr,
                inner_steps=self.config.test_inner_steps,
            )
        with torch.no_grad():
            return functional_call(self.model, adapted, (x_query,))

    def predict(self, x_support: Tensor, y_support: Tensor, x_query: Tensor) -> Tensor:
        """Predicted labels ``(n_query,)``."""
        return self.scores(x_support, y_support, x_query).argmax(dim=-1)


def load(
    name_or_path: str | os.PathLike[str], *, device: torch.device | str = "cpu"
) -> FewShotClassifier | sinusoid.Learner | cnp.CNP | mann.MANN | transfer.PretrainedClassifier:
    """The model of a checkpoint: a shipped name or a ``PATH.pt``.

    Returns:
        A :class:`~metalib.recipes.sinusoid.Learner` for the sinusoid MAML family, a
        :class:`~metalib.algorithms.cnp.CNP` (in eval mode) for ``cnp-sinusoid``, a
        :class:`~metalib.algorithms.mann.MANN` for ``mann-omniglot`` (it reads labelled
        sequences), the pretrained network of ``transfer-omniglot`` (use it with
        :func:`~metalib.algorithms.transfer.fine_tune_head`), and a
        :class:`FewShotClassifier` for the other Omniglot recipes.

    Raises:
        FileNotFoundError: if there is no such checkpoint.
        ValueError: if the file is not a checkpoint of this course, naming it.
    """
    run = recipes.load(path_of(name_or_path), device=device)
    family = recipes.family_of(run.config.recipe)
    if family is sinusoid:
        return sinusoid.learner_of(run)
    if family in (cnp_sinusoid, mann_omniglot, transfer_omniglot):
        return run.model
    params = None if family is metric_omniglot else run.params
    return FewShotClassifier(run.config.recipe, run.config, run.model.eval(), params, run.sidecar)


__all__ = ["FewShotClassifier", "load", "path_of", "recorded_accuracy", "shipped"]
