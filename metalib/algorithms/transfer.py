"""Transfer learning, the baseline every meta-learner must beat (Chen et al. 2019).

No episodes in training: the four-block network of chapter 07 with a linear layer over
*all* training classes is trained as an ordinary classifier. At test time the old layer
is thrown away and a new ``n_way`` layer is fitted to the support set of each episode,
either on frozen features (``fine_tune_head``) or together with the whole network
(``fine_tune_whole``). Taught in ``notebooks/09_comparison.ipynb``.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checks
from metalib.models import ConvEmbedding


class PretrainedClassifier(nn.Module):
    """The embedding network and a linear layer over ``n_classes`` training classes."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        checks.count("n_classes", n_classes, 2)
        self.embedding = ConvEmbedding()
        self.head = nn.Linear(64, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embedding(x))  # (..., n_classes)


def fit_heads(
    features_support: Tensor,
    y_support: Tensor,
    n_way: int,
    *,
    steps: int = 100,
    lr: float = 0.1,
    weight_decay: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """A logistic-regression head per episode, fitted by Adam on the support features.

    Args:
        features_support: ``(tasks, n_support, d)``.
        y_support: ``(tasks, n_support)`` in ``0..n_way-1``.

    Returns:
        ``weight (tasks, n_way, d)`` and ``bias (tasks, n_way)``. The episodes' losses are
        summed, so each head's gradient is its own episode's: one optimiser fits them all.
    """
    checks.count("steps", steps, 0)
    checks.positive_number("lr", lr)
    if features_support.ndim != 3 or y_support.shape != features_support.shape[:2]:
        raise ValueError(
            f"features_support must be (tasks, n, d) and y_support (tasks, n); got "
            f"{tuple(features_support.shape)} and {tuple(y_support.shape)}."
        )
    tasks, _, dim = features_support.shape
    features = features_support.detach()
    weight = features.new_zeros(tasks, n_way, dim, requires_grad=True)
    bias = features.new_zeros(tasks, n_way, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(steps):
            logits = features @ weight.transpose(1, 2) + bias[:, None]  # (tasks, n, n_way)
            loss = F.cross_entropy(logits.flatten(0, 1), y_support.flatten(), reduction="sum")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weight.detach(), bias.detach()


def fine_tune_head(
    embedding: nn.Module,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    n_way: int,
    *,
    steps: int = 100,
    lr: float = 0.1,
) -> Tensor:
    """Query logits ``(tasks, n_query, n_way)`` from new heads on frozen features."""
    with torch.no_grad():
        support, query = embedding(x_support), embedding(x_query)  # (tasks, n, 64)
    weight, bias = fit_heads(support, y_support, n_way, steps=steps, lr=lr)
    return query @ weight.transpose(1, 2) + bias[:, None]


def fine_tune_whole(
    embedding: nn.Module,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    n_way: int,
    *,
    steps: int = 20,
    lr: float = 1e-3,
    head_steps: int = 100,
) -> Tensor:
    """Query logits after fitting a head, then fine-tuning network and head per episode.

    Each episode gets its own copy of the network (batch norm with its running
    statistics, as at test time), a head started from :func:`fit_heads`, and ``steps`` of
    Adam on the support cross-entropy. Slow: one episode at a time.
    """
    checks.count("steps", steps, 0)
    out = []
    for t in range(x_support.shape[0]):
        net = copy.deepcopy(embedding).eval()
        with torch.no_grad():
            features = net(x_support[t : t + 1])
        weight, bias = fit_heads(features, y_support[t : t + 1], n_way, steps=head_steps)
        head = nn.Linear(features.shape[-1], n_way).to(features.device)
        with torch.no_grad():
            head.weight.copy_(weight[0])
            head.bias.copy_(bias[0])
        optimizer = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                loss = F.cross_entropy(head(net(x_support[t])), y_support[t])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            out.append(head(net(x_query[t])))
    return torch.stack(out)  # (tasks, n_query, n_way)


__all__ = ["PretrainedClassifier", "fine_tune_head", "fine_tune_whole", "fit_heads"]
