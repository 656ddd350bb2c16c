"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017, arXiv:1703.05175).

An embedding ``f`` maps images to vectors. Each class's prototype is the mean embedding
of its support images,

    c_k = (1 / K) Σ_{(x, y) in support, y = k} f(x)                          (1)

and a query ``x`` gets the logits ``-d(f(x), c_k)``, a softmax over negative distances.
With the squared Euclidean distance this is a linear classifier on ``f(x)``:

    -‖f(x) - c_k‖² = 2 c_kᵀ f(x) - ‖c_k‖² - ‖f(x)‖²                            (2)

where the last term is the same for every class and drops out of the softmax, so
``W_k = 2 c_k`` and ``b_k = -‖c_k‖²`` (section 2.3 of the paper; :func:`linear_form`).
Cosine similarity is the option the paper found worse; it needs a scale because it lies
in [-1, 1]. Training is plain cross-entropy over episodes with more classes than at test
time (60-way, 5 queries per class, Adam 1e-3 halved every 2,000 episodes). Taught in
``notebooks/07_prototypical_networks.ipynb``.

Every function takes a leading task dimension: embeddings ``(tasks, n, dim)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checks

DISTANCES = ("euclidean", "cosine")
COSINE_SCALE = 10.0  # cosine logits in [-10, 10]: a softmax that can become confident


def class_average(values: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Mean of ``values`` ``(tasks, n, ...)`` per label ``(tasks, n)``: ``(tasks, n_way, ...)``.

    Raises:
        ValueError: if a label is outside ``0..n_way-1`` or a class has no example.
    """
    if labels.numel() and (labels.min() < 0 or labels.max() >= n_way):
        raise ValueError(f"labels must lie in 0..{n_way - 1}; got {labels.unique().tolist()}.")
    one_hot = F.one_hot(labels, n_way).to(values.dtype)  # (tasks, n, n_way)
    counts = one_hot.sum(dim=1)  # (tasks, n_way)
    if (counts == 0).any():
        raise ValueError(f"every one of the {n_way} classes needs a support example.")
    flat = values.flatten(2)  # (tasks, n, features)
    sums = one_hot.transpose(1, 2) @ flat  # (tasks, n_way, features)
    return (sums / counts[..., None]).reshape(*sums.shape[:2], *values.shape[2:])


def prototypes(support_embeddings: Tensor, y_support: Tensor, n_way: int) -> Tensor:
    """Equation (1): ``(tasks, n_support, dim)`` → ``(tasks, n_way, dim)`` class means."""
    return class_average(support_embeddings, y_support, n_way)


def logits(query_embeddings: Tensor, protos: Tensor, *, distance: str = "euclidean") -> Tensor:
    """Class scores ``(tasks, n_query, n_way)`` of each query against each prototype.

    Args:
        query_embeddings: ``(tasks, n_query, dim)``.
        protos: ``(tasks, n_way, dim)``, from :func:`prototypes`.
        distance: ``"euclidean"`` (negative squared distance, the paper) or ``"cosine"``
            (cosine similarity times :data:`COSINE_SCALE`).
    """
    checks.one_of("distance", distance, DISTANCES)
    if distance == "cosine":
        q, c = F.normalize(query_embeddings, dim=-1), F.normalize(protos, dim=-1)
        return COSINE_SCALE * q @ c.transpose(1, 2)  # (tasks, n_query, n_way)
    diff = query_embeddings[:, :, None] - protos[:, None]  # (tasks, n_query, n_way, dim)
    return -diff.pow(2).sum(dim=-1)  # (tasks, n_query, n_way)


def linear_form(protos: Tensor) -> tuple[Tensor, Tensor]:
    """Equation (2): weights ``(tasks, n_way, dim)`` and biases ``(tasks, n_way)``.

    ``q @ W.T + b`` equals the Euclidean :func:`logits` plus ``‖q‖²`` for every class, so
    both give the same softmax and the same predictions.
    """
    return 2 * protos, -protos.pow(2).sum(dim=-1)


def episode_logits(
    model: nn.Module,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    *,
    n_way: int,
    distance: str = "euclidean",
) -> Tensor:
    """Embed an episode batch and score its queries: ``(tasks, n_query, n_way)``.

    Args:
        model: the embedding, ``(..., 1, 28, 28)`` → ``(..., dim)``.
        x_support: ``(tasks, n_support, 1, 28, 28)``; y_support ``(tasks, n_support)``.
        x_query: ``(tasks, n_query, 1, 28, 28)``.
    """
    n_support = x_support.shape[1]
    # One forward pass for support and query, so batch norm sees the whole episode.
    embedded = model(torch.cat([x_support, x_query], dim=1))  # (tasks, n_support + n_query, dim)
    protos = prototypes(embedded[:, :n_support], y_support, n_way)  # (tasks, n_way, dim)
    return logits(embedded[:, n_support:], protos, distance=distance)


__all__ = [
    "COSINE_SCALE",
    "DISTANCES",
    "class_average",
    "episode_logits",
    "linear_form",
    "logits",
    "prototypes",
]
