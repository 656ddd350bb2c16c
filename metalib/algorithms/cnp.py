"""Conditional Neural Processes: the network is the learner (Garnelo et al. 2018).

A CNP reads the support set (the *context*) once and predicts every query (the *target*)
in one forward pass, with no gradient step at test time:

1. an encoder :math:`h` maps each context pair :math:`(x_i, y_i)` to a vector :math:`r_i`;
2. their mean :math:`r = \\frac{1}{n}\\sum_i r_i` summarises the task, the same whatever
   the order of the context points;
3. a decoder :math:`g` maps :math:`(x, r)` to a Gaussian :math:`\\mathcal{N}(\\mu, \\sigma^2)`
   for the query's :math:`y`.

Training maximises the query log-likelihood over random tasks. The standard deviation is
bounded below (:math:`\\sigma = 0.1 + 0.9\\,\\mathrm{softplus}(\\cdot)`, as in the paper's
code) so that the likelihood cannot grow without bound on a single point. Chapter 08
teaches it on sinusoids.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checks


def _mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CNP(nn.Module):
    """A conditional neural process for functions from ``x_dim`` to ``y_dim`` numbers.

    Args:
        hidden: width of every hidden layer and of the representation :math:`r`
            (the paper's 1-D regression uses 128).
        encoder_layers / decoder_layers: linear layers in :math:`h` and :math:`g`.
        min_std: the lower bound of the predicted standard deviation.
    """

    def __init__(
        self,
        *,
        x_dim: int = 1,
        y_dim: int = 1,
        hidden: int = 128,
        encoder_layers: int = 3,
        decoder_layers: int = 3,
        min_std: float = 0.1,
    ) -> None:
        super().__init__()
        for name, value in (("x_dim", x_dim), ("y_dim", y_dim), ("hidden", hidden)):
            checks.count(name, value, 1)
        checks.count("encoder_layers", encoder_layers, 1)
        checks.count("decoder_layers", decoder_layers, 1)
        if not 0 < min_std < 1:
            raise ValueError(f"min_std={min_std!r} must lie strictly between 0 and 1.")
        self.x_dim, self.y_dim, self.min_std = x_dim, y_dim, min_std
        self.encoder = _mlp((x_dim + y_dim, *[hidden] * encoder_layers))
        self.decoder = _mlp((x_dim + hidden, *[hidden] * (decoder_layers - 1), 2 * y_dim))

    def represent(self, x_support: Tensor, y_support: Tensor) -> Tensor:
        """The task's representation :math:`r`, ``(tasks, hidden)``, from its support set."""
        self._check(x_support, y_support)
        pairs = torch.cat([x_support, y_support], dim=-1)  # (tasks, k, x_dim + y_dim)
        return self.encoder(pairs).mean(dim=1)  # (tasks, hidden)

    def decode(self, r: Tensor, x_query: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation at ``x_query`` (tasks, m, x_dim) given ``r``."""
        r_each = r[:, None].expand(-1, x_query.shape[1], -1)  # (tasks, m, hidden)
        out = self.decoder(torch.cat([x_query, r_each], dim=-1))  # (tasks, m, 2 * y_dim)
        mean, raw_std = out.split(self.y_dim, dim=-1)
        return mean, self.min_std + (1 - self.min_std) * F.softplus(raw_std)

    def forward(
        self, x_support: Tensor, y_support: Tensor, x_query: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Predictive mean and standard deviation at the queries, each (tasks, m, y_dim)."""
        if x_query.ndim != 3 or x_query.shape[-1] != self.x_dim:
            raise ValueError(
                f"x_query must have shape (tasks, m, {self.x_dim}); got {tuple(x_query.shape)}."
            )
        return self.decode(self.represent(x_support, y_support), x_query)

    def _check(self, x_support: Tensor, y_support: Tensor) -> None:
        if x_support.ndim != 3 or x_support.shape[-1] != self.x_dim:
            raise ValueError(
                f"x_support must have shape (tasks, k, {self.x_dim}); got {tuple(x_support.shape)}."
            )
        if y_support.shape != (*x_support.shape[:2], self.y_dim):
            raise ValueError(
                f"y_support must have shape {(*x_support.shape[:2], self.y_dim)} to match "
                f"x_support; got {tuple(y_support.shape)}."
            )
        if x_support.shape[1] == 0:
            raise ValueError("a CNP needs at least one support point (k >= 1); got none.")


def gaussian_nll(mean: Tensor, std: Tensor, y: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``y`` under :math:`\\mathcal{N}(\\mu, \\sigma^2)`."""
    nll = 0.5 * ((y - mean) / std) ** 2 + std.log() + 0.5 * math.log(2 * math.pi)
    return nll.mean()


__all__ = ["CNP", "gaussian_nll"]
