"""Siamese networks for one-shot classification (Koch, Zemel & Salakhutdinov, ICML Deep
Learning Workshop 2015).

Two images go through the same embedding ``f``; the network scores whether they show
the same character from the weighted L1 distance of their embeddings,

    p(same | x₁, x₂) = σ(Σ_j w_j |f(x₁)_j - f(x₂)_j| + b)                      (1)

trained as a verification task with binary cross-entropy. One-shot classification then
labels a query with the support class it scores highest against (for ``k_shot > 1``, the
mean score over the class's support images). Koch et al. used a larger convolutional net
on 105×105 images, affine distortions and Lake's background/evaluation split; here the
embedding is the course's :class:`~metalib.models.ConvEmbedding` on 28×28 images and the
pairs come from the same episodes as the other methods (every query against every
support image, same-class pairs weighted to balance the different-class ones). Taught in
``notebooks/07_prototypical_networks.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib.algorithms.protonet import class_average
from metalib.models import ConvEmbedding


class SiameseNet(nn.Module):
    """Equation (1): an embedding and a linear layer on the absolute difference.

    ``forward(x1, x2)`` takes ``(..., 1, 28, 28)`` images and returns ``(...)`` logits of
    "same class"; :meth:`pair_logits` scores every pair of two sets of embeddings.
    """

    def __init__(self, *, hidden: int = 64) -> None:
        super().__init__()
        self.embedding = ConvEmbedding(hidden=hidden)
        self.head = nn.Linear(hidden, 1)

    def pair_logits(self, a: Tensor, b: Tensor) -> Tensor:
        """``(tasks, n, dim)`` and ``(tasks, m, dim)`` embeddings → ``(tasks, n, m)`` logits."""
        distance = (a[:, :, None] - b[:, None]).abs()  # (tasks, n, m, dim)
        return self.head(distance).squeeze(-1)  # (tasks, n, m)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        d = (self.embedding(x1) - self.embedding(x2)).abs()  # (..., dim)
        return self.head(d).squeeze(-1)  # (...)


def episode_logits(
    model: SiameseNet, x_support: Tensor, y_support: Tensor, x_query: Tensor, *, n_way: int
) -> Tensor:
    """Class scores ``(tasks, n_query, n_way)``: each query's mean pair logit per class."""
    n_support = x_support.shape[1]
    embedded = model.embedding(torch.cat([x_support, x_query], dim=1))  # (tasks, n_s + n_q, dim)
    pairs = model.pair_logits(embedded[:, n_support:], embedded[:, :n_support])  # (tasks, n_q, n_s)
    return class_average(pairs.transpose(1, 2), y_support, n_way).transpose(1, 2)


def pair_loss(
    model: SiameseNet, x_support: Tensor, y_support: Tensor, x_query: Tensor, y_query: Tensor
) -> Tensor:
    """Binary cross-entropy of every (query, support) pair of an episode batch.

    Same-class pairs are fewer (one in ``n_way``), so they are weighted up to balance the
    different-class pairs, as Koch et al. balance their verification set.
    """
    n_support = x_support.shape[1]
    embedded = model.embedding(torch.cat([x_support, x_query], dim=1))
    pairs = model.pair_logits(embedded[:, n_support:], embedded[:, :n_support])  # (tasks, n_q, n_s)
    same = (y_query[:, :, None] == y_support[:, None]).to(pairs.dtype)  # (tasks, n_q, n_s)
    positives = same.sum().clamp_min(1)
    weight = (same.numel() - positives) / positives
    return F.binary_cross_entropy_with_logits(pairs, same, pos_weight=weight)


__all__ = ["SiameseNet", "episode_logits", "pair_loss"]
