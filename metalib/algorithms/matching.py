"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NeurIPS 2016,
arXiv:1606.04080), without the full-context embeddings.

A query ``x̂`` is labelled by attention over the support set,

    P(y = k | x̂, S) = Σ_i a(x̂, x_i) [y_i = k],   a(x̂, x_i) = softmax_i(s · cos(f(x̂), f(x_i)))   (1)

a kernel-weighted vote of the support labels. The paper's full-context embeddings (a
bidirectional LSTM over the support set, and an attention LSTM for the query) are left
out: here ``f`` is the same :class:`~metalib.models.ConvEmbedding` for support and query
(chapter 07 compares it with the paper's Omniglot rows and says so). The paper writes the softmax
over plain cosines; ``scale`` (``s``) multiplies them first, and ``scale=1`` is the paper.
Taught in ``notebooks/07_prototypical_networks.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checks

DEFAULT_SCALE = 10.0


def log_probabilities(
    query_embeddings: Tensor,
    support_embeddings: Tensor,
    y_support: Tensor,
    n_way: int,
    *,
    scale: float = DEFAULT_SCALE,
) -> Tensor:
    """Equation (1) in log space: ``(tasks, n_query, n_way)``.

    Args:
        query_embeddings: ``(tasks, n_query, dim)``.
        support_embeddings: ``(tasks, n_support, dim)``; y_support ``(tasks, n_support)``.
        scale: multiplies the cosine similarities before the softmax (1: the paper).

    The result is a log-probability, so ``F.cross_entropy`` on it is the negative
    log-likelihood (its log-softmax leaves log-probabilities unchanged).
    """
    checks.positive_number("scale", scale)
    if y_support.numel() and (y_support.min() < 0 or y_support.max() >= n_way):
        raise ValueError(f"labels must lie in 0..{n_way - 1}; got {y_support.unique().tolist()}.")
    q = F.normalize(query_embeddings, dim=-1)
    s = F.normalize(support_embeddings, dim=-1)
    attention = torch.softmax(scale * q @ s.transpose(1, 2), dim=-1)  # (tasks, n_query, n_support)
    votes = attention @ F.one_hot(y_support, n_way).to(attention.dtype)  # (tasks, n_query, n_way)
    return votes.clamp_min(torch.finfo(votes.dtype).tiny).log()


def episode_logits(
    model: nn.Module,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    *,
    n_way: int,
    scale: float = DEFAULT_SCALE,
) -> Tensor:
    """Embed an episode batch; the queries' log-probabilities ``(tasks, n_query, n_way)``."""
    n_support = x_support.shape[1]
    embedded = model(torch.cat([x_support, x_query], dim=1))  # (tasks, n_support + n_query, dim)
    return log_probabilities(
        embedded[:, n_support:], embedded[:, :n_support], y_support, n_way, scale=scale
    )


__all__ = ["DEFAULT_SCALE", "episode_logits", "log_probabilities"]
