"""ProtoMAML: the prototype head, the ProtoNet it starts as, and its meta-gradient against
an autograd loop and finite differences in float64."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metalib.algorithms import protomaml, protonet
from metalib.models import ConvEmbedding


def episode(gen, tasks=2, n_way=4, k_shot=2, n_query=6, dtype=torch.float32):
    x_support = torch.rand(tasks, n_way * k_shot, 1, 28, 28, generator=gen, dtype=dtype)
    y_support = torch.arange(n_way).repeat_interleave(k_shot).expand(tasks, -1)
    x_query = torch.rand(tasks, n_query, 1, 28, 28, generator=gen, dtype=dtype)
    y_query = torch.randint(n_way, (tasks, n_query), generator=gen)
    return x_support, y_support, x_query, y_query


def small_net(dtype=torch.float64):
    """A tiny embedding without batch norm: finite differences stay exact enough."""
    torch.manual_seed(0)
    embedding = nn.Sequential(nn.Flatten(), nn.Linear(784, 6), nn.Tanh(), nn.Linear(6, 5))
    net = protomaml.HeadedEmbedding(embedding.to(dtype))
    return net, protomaml.theta_of(embedding)


def test_with_no_inner_step_it_is_the_protonet():
    torch.manual_seed(0)
    model = ConvEmbedding().eval()
    net = protomaml.HeadedEmbedding(model)
    params = protomaml.theta_of(model)
    x_support, y_support, x_query, _ = episode(torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = protomaml.episode_logits(
            net, params, x_support, y_support, x_query, n_way=4, inner_steps=0
        )
        theirs = protonet.episode_logits(model, x_support, y_support, x_query, n_way=4)
    # Equation (1) drops -|q|² from every class's score: the same softmax, the same answers.
    norms = model(x_query).detach().pow(2).sum(-1, keepdim=True)  # (tasks, n_query, 1)
    torch.testing.assert_close(ours - theirs, norms.expand_as(ours), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(ours.softmax(-1), theirs.softmax(-1), rtol=1e-4, atol=1e-5)


def test_the_head_is_twice_the_prototypes_and_minus_their_squared_norms():
    net, params = small_net()
    x_support, y_support, _, _ = episode(torch.Generator().manual_seed(2), dtype=torch.float64)
    head = protomaml.head_from_prototypes(net, params, x_support[0], y_support[0], n_way=4)
    features = net.embedding(x_support[0])  # (8, 5)
    protos = torch.stack([features[y_support[0] == k].mean(0) for k in range(4)])  # (4, 5)
    torch.testing.assert_close(head["head.weight"], 2 * protos)
    torch.testing.assert_close(head["head.bias"], -(protos**2).sum(-1))


def test_adapt_is_gradient_descent_on_the_support_cross_entropy():
    net, params = small_net()
    x_support, y_support, _, _ = episode(torch.Generator().manual_seed(3), dtype=torch.float64)
    x, y = x_support[0], y_support[0]
    adapted = protomaml.adapt(net, params, x, y, n_way=4, inner_lr=0.3, inner_steps=2)
    # By hand: the prototype head, then two steps of autograd.grad.
    fast = {**params, **protomaml.head_from_prototypes(net, params, x, y, n_way=4)}
    fast = {k: v.detach().requires_grad_() for k, v in fast.items()}
    for _ in range(2):
        loss = F.cross_entropy(functional_call(net, fast, (x,)), y)
        grads = torch.autograd.grad(loss, list(fast.values()))
        fast = {
            k: (v - 0.3 * g).detach().requires_grad_() for (k, v), g in zip(fast.items(), grads)
        }
    assert set(adapted) == set(fast)
    for name in fast:
        torch.testing.assert_close(adapted[name], fast[name])
    start = protomaml.head_from_prototypes(net, params, x, y, n_way=4)["head.weight"]
    assert (adapted["head.weight"] - start).abs().max() > 1e-3  # the steps moved the head


def meta_loss_of(net, params, batch, **options):
    x_support, y_support, x_query, y_query = batch
    scores = protomaml.episode_logits(
        net, params, x_support, y_support, x_query, n_way=4, inner_lr=0.5, **options
    )
    return F.cross_entropy(scores.flatten(0, 1), y_query.flatten())


def test_second_order_meta_gradient_matches_finite_differences():
    net, params = small_net()
    batch = episode(torch.Generator().manual_seed(4), dtype=torch.float64)
    theta = {k: v.detach().requires_grad_() for k, v in params.items()}
    loss = meta_loss_of(net, theta, batch, inner_steps=2, first_order=False)
    grads = dict(zip(theta, torch.autograd.grad(loss, list(theta.values()))))
    gen = torch.Generator().manual_seed(5)
    for name in ("embedding.1.weight", "embedding.3.bias"):
        for _ in range(3):
            index = tuple(int(torch.randint(s, (1,), generator=gen)) for s in theta[name].shape)
            eps = 1e-6
            moved = []
            for sign in (1, -1):
                shifted = {k: v.detach().clone() for k, v in theta.items()}
                shifted[name][index] += sign * eps
                moved.append(meta_loss_of(net, shifted, batch, inner_steps=2, first_order=False))
            numeric = (moved[0] - moved[1]) / (2 * eps)
            torch.testing.assert_close(grads[name][index], numeric, rtol=1e-5, atol=1e-8)


def test_first_order_keeps_the_path_through_the_prototypes():
    net, params = small_net()
    batch = episode(torch.Generator().manual_seed(6), dtype=torch.float64)
    x_support, y_support, x_query, y_query = batch

    def reference(theta, *, detach_head=False):
        """The query loss with every inner gradient a constant, task by task."""
        losses = []
        for i in range(len(x_support)):
            x, y = x_support[i], y_support[i]
            head = protomaml.head_from_prototypes(net, theta, x, y, n_way=4)
            if detach_head:
                head = {k: v.detach() for k, v in head.items()}
            start = {**theta, **head}
            shift = {k: torch.zeros_like(v) for k, v in start.items()}
            for _ in range(2):
                current = {k: (start[k] - shift[k]).detach().requires_grad_() for k in start}
                loss = F.cross_entropy(functional_call(net, current, (x,)), y)
                grads = torch.autograd.grad(loss, list(current.values()))
                shift = {k: shift[k] + 0.5 * g for k, g in zip(current, grads)}
            adapted = {k: start[k] - shift[k] for k in start}
            logits = functional_call(net, adapted, (x_query[i],))
            losses.append(F.cross_entropy(logits, y_query[i], reduction="sum"))
        return torch.stack(losses).sum() / y_query.numel()

    theta = {k: v.detach().requires_grad_() for k, v in params.items()}
    first = meta_loss_of(net, theta, batch, inner_steps=2, first_order=True)
    ours = torch.autograd.grad(first, list(theta.values()))
    theirs = torch.autograd.grad(reference(theta), list(theta.values()))
    second = torch.autograd.grad(
        meta_loss_of(net, theta, batch, inner_steps=2, first_order=False), list(theta.values())
    )
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)
    assert any(not torch.allclose(a, c) for a, c in zip(ours, second))  # it is first order
    # The head's path through the prototypes carries part of the embedding's gradient.
    without = torch.autograd.grad(reference(theta, detach_head=True), list(theta.values()))
    gap = max(float((a - b).abs().max()) for a, b in zip(ours, without))
    assert gap > 1e-3 * max(float(a.abs().max()) for a in ours)


def test_a_headed_embedding_without_a_task_head_says_what_to_pass():
    net, _ = small_net()
    with pytest.raises(ValueError, match="head_from_prototypes"):
        net(torch.zeros(2, 1, 28, 28, dtype=torch.float64))


def test_start_loss_is_the_support_cross_entropy_of_the_prototype_head():
    net, params = small_net()
    x_support, y_support, _, _ = episode(torch.Generator().manual_seed(7), dtype=torch.float64)
    losses = protomaml.start_loss(net, params, x_support, y_support, n_way=4)
    for i, loss in enumerate(losses):
        features = net.embedding(x_support[i]).detach()  # (8, 5)
        protos = protonet.prototypes(features[None], y_support[i][None], 4)  # (1, 4, 5)
        scores = protonet.logits(features[None], protos)[0]  # the same softmax as the head's
        torch.testing.assert_close(loss, F.cross_entropy(scores, y_support[i]))
    # One shot: each support image is its own prototype, at distance 0, so the loss is small.
    one_shot = protomaml.start_loss(net, params, x_support[:, ::2], y_support[:, ::2], n_way=4)
    assert (one_shot < losses).all()
