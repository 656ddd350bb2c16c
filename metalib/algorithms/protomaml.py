"""ProtoMAML (Triantafillou et al., ICLR 2020, "Meta-Dataset", arXiv:1903.03096).

Where the two families meet. A Prototypical Network's Euclidean classifier is a linear
layer on the embedding (:func:`metalib.algorithms.protonet.linear_form`):

    W_k = 2 c_k,    b_k = -‖c_k‖²                                              (1)

ProtoMAML puts that layer on top of the embedding as the starting head of each task, and
then runs MAML's inner loop (:func:`metalib.algorithms.maml.adapt`) on the support set,
embedding and head together:

    φ_0 = (θ, W(θ), b(θ)),    φ_{i+1} = φ_i - α ∇ L_support(φ_i)                (2)

With no inner step the predictions are exactly the ProtoNet's. Because the head is a
function of θ through the prototypes, the meta-gradient of the query loss reaches the
embedding twice: through the adapted embedding and through the head's starting point. The
paper trains first-order (fo-Proto-MAML); ``first_order=True`` drops the inner Hessian but
keeps that path through the prototypes.

Departures from the paper: the embedding's batch norm keeps its running statistics in the
inner loop and at test time (the ProtoNet checkpoints of chapter 07 were trained that way),
so one task's adaptation never depends on another's images. Taught in
``notebooks/07_prototypical_networks.ipynb``.

Parameter dicts hold the embedding's parameters under ``embedding.`` and, once a task's
head is made, ``head.weight`` ``(n_way, dim)`` and ``head.bias`` ``(n_way,)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metalib.algorithms import maml, protonet

Params = dict[str, Tensor]
HEAD = ("head.weight", "head.bias")


class HeadedEmbedding(nn.Module):
    """An embedding with a linear head on top: ``(n, 1, 28, 28)`` → ``(n, n_way)`` logits.

    The head has no weights of its own (empty placeholders, so that building it draws no
    random numbers): every call passes a task's head in the parameter dict, as
    :func:`adapt` does (``functional_call(model, {**params, **head}, (x,))``).

    Args:
        embedding: a network that maps images to ``(n, dim)`` vectors, e.g.
            :class:`~metalib.models.ConvEmbedding`; it is shared, not copied.
    """

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding
        self.head = nn.Module()
        self.head.weight = nn.Parameter(torch.empty(0))
        self.head.bias = nn.Parameter(torch.empty(0))

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.head.weight, self.head.bias
        if weight.dim() != 2:
            raise ValueError(
                "HeadedEmbedding has no head of its own: call it through functional_call "
                "with head.weight (n_way, dim) and head.bias (n_way,), e.g. from "
                "protomaml.head_from_prototypes."
            )
        return F.linear(self.embedding(x), weight, bias)  # (n, n_way)


def theta_of(embedding: nn.Module) -> Params:
    """θ: the parameters of ``embedding``, named as :class:`HeadedEmbedding` names them
    (``features.0.weight`` → ``embedding.features.0.weight``); the same tensors, not copies."""
    return {f"embedding.{n}": p for n, p in embedding.named_parameters()}


def head_from_prototypes(
    model: HeadedEmbedding, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int
) -> Params:
    """Equation (1) for one task: ``head.weight`` ``(n_way, dim)`` and ``head.bias``
    ``(n_way,)`` from the prototypes of the support set, embedded with ``params``.

    Args:
        params: θ, the embedding's parameters (``embedding.*``); a head in it is ignored.
        x_support: ``(n_support, 1, 28, 28)``; y_support ``(n_support,)``.
    """
    theta = {n.removeprefix("embedding."): v for n, v in params.items() if n not in HEAD}
    features = functional_call(model.embedding, theta, (x_support,))  # (n_support, dim)
    protos = protonet.prototypes(features[None], y_support[None], n_way)  # (1, n_way, dim)
    weight, bias = protonet.linear_form(protos)  # (1, n_way, dim), (1, n_way)
    return {"head.weight": weight[0], "head.bias": bias[0]}


@torch.no_grad()
def start_loss(
    model: HeadedEmbedding, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int
) -> Tensor:
    """The support set's cross-entropy under its own prototype head, before any inner
    step: what the first step of :func:`adapt` descends, one value per task ``(tasks,)``.

    Args:
        x_support: ``(tasks, n_support, 1, 28, 28)``; y_support ``(tasks, n_support)``.
    """
    losses = []
    for x, y in zip(x_support, y_support, strict=True):
        head = head_from_prototypes(model, params, x, y, n_way=n_way)
        losses.append(F.cross_entropy(functional_call(model, {**params, **head}, (x,)), y))
    return torch.stack(losses)


def adapt(
    model: HeadedEmbedding,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    *,
    n_way: int,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
) -> Params:
    """Equation (2) for one task: θ with its prototype head, after ``inner_steps`` steps of
    gradient descent on the support set's cross-entropy.

    Works eagerly and under ``torch.func.vmap``; stays differentiable in θ (through the
    inner steps unless ``first_order``, and through the prototypes always).

    Returns:
        The adapted dict: the embedding's parameters and ``head.weight``, ``head.bias``.
    """
    head = head_from_prototypes(model, params, x_support, y_support, n_way=n_way)
    start = {**{n: v for n, v in params.items() if n not in HEAD}, **head}
    return maml.adapt(
        model,
        start,
        x_support,
        y_support,
        loss_fn=F.cross_entropy,
        inner_lr=inner_lr,
        inner_steps=inner_steps,
        first_order=first_order,
    )


def episode_logits(
    model: HeadedEmbedding,
    params: Params,
    x_support: Tensor,
    y_support: Tensor,
    x_query: Tensor,
    *,
    n_way: int,
    inner_lr: float = 0.01,
    inner_steps: int = 1,
    first_order: bool = False,
) -> Tensor:
    """Query logits ``(tasks, n_query, n_way)`` of a batch of episodes, each after
    :func:`adapt` on its own support set. Their cross-entropy is ProtoMAML's meta-loss.

    A loop over tasks rather than ``vmap``: the embedding's channels-last convolutions
    (:class:`~metalib.models.ConvEmbedding`) cannot run under ``vmap``.

    Args:
        x_support: ``(tasks, n_support, 1, 28, 28)``; y_support ``(tasks, n_support)``.
        x_query: ``(tasks, n_query, 1, 28, 28)``.
    """
    logits = []
    for x, y, queries in zip(x_support, y_support, x_query, strict=True):
        adapted = adapt(
            model,
            params,
            x,
            y,
            n_way=n_way,
            inner_lr=inner_lr,
            inner_steps=inner_steps,
            first_order=first_order,
        )
        logits.append(functional_call(model, adapted, (queries,)))  # (n_query, n_way)
    return torch.stack(logits)


__all__ = [
    "HEAD",
    "HeadedEmbedding",
    "adapt",
    "episode_logits",
    "head_from_prototypes",
    "start_loss",
    "theta_of",
]
