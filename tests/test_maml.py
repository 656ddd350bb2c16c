"""Oracle and invariant tests for metalib.algorithms.maml."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metalib.algorithms import maml
from metalib.models import SinusoidMLP, clone_parameters, parameters_of
from metalib.tasks import SinusoidTasks


@pytest.fixture(autouse=True, scope="module")
def _float64():
    """Oracle comparisons in double precision, for this module's tests only."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make(seed=0, n_tasks=4, k_shot=5, k_query=7):
    torch.manual_seed(seed)
    model = SinusoidMLP().double()
    tasks = SinusoidTasks().sample(
        n_tasks, k_shot=k_shot, k_query=k_query, generator=torch.Generator().manual_seed(seed)
    )
    tasks = type(tasks)(*(t.double() for t in tasks))
    return model, tasks


def meta_grad(fn, model, tasks, **kw):
    params = clone_parameters(parameters_of(model))
    loss = fn(model, params, tasks, **kw)
    grads = torch.autograd.grad(loss, list(params.values()))
    return loss.detach(), dict(zip(params, grads))


def mlp_from_scratch(p, x):
    """The 1-40-40-1 ReLU network written out, independent of nn.Module and functional_call."""
    h = torch.relu(x @ p["net.0.weight"].T + p["net.0.bias"])
    h = torch.relu(h @ p["net.2.weight"].T + p["net.2.bias"])
    return h @ p["net.4.weight"].T + p["net.4.bias"]


@pytest.mark.parametrize("inner_steps", [1, 3])
def test_meta_gradient_matches_autograd_create_graph(inner_steps):
    model, tasks = make()
    alpha = 0.05
    params = clone_parameters(parameters_of(model))
    names = list(params)
    total = 0.0
    for i in range(len(tasks)):
        adapted = dict(params)
        for _ in range(inner_steps):
            support = F.mse_loss(mlp_from_scratch(adapted, tasks.x_support[i]), tasks.y_support[i])
            grads = torch.autograd.grad(support, [adapted[n] for n in names], create_graph=True)
            adapted = {n: adapted[n] - alpha * g for n, g in zip(names, grads)}
        total = total + F.mse_loss(mlp_from_scratch(adapted, tasks.x_query[i]), tasks.y_query[i])
    expected_loss = total / len(tasks)
    expected = torch.autograd.grad(expected_loss, [params[n] for n in names])

    loss, got = meta_grad(maml.meta_loss, model, tasks, inner_lr=alpha, inner_steps=inner_steps)
    torch.testing.assert_close(loss, expected_loss.detach())
    for n, g in zip(names, expected):
        torch.testing.assert_close(got[n], g, msg=f"meta-gradient of {n}")


def test_one_step_maml_on_linear_regression_matches_closed_form():
    torch.manual_seed(1)
    d, n, m, alpha = 3, 6, 8, 0.1
    model = nn.Linear(d, 1, bias=False).double()
    w = model.weight.detach().clone().T  # (d, 1)
    xs, ys = torch.randn(1, n, d), torch.randn(1, n, 1)
    xq, yq = torch.randn(1, m, d), torch.randn(1, m, 1)
    identity = torch.eye(d)
    a = identity - 2 * alpha / n * xs[0].T @ xs[0]  # d w' / d w
    w_adapted = a @ w + 2 * alpha / n * xs[0].T @ ys[0]
    residual = xq[0] @ w_adapted - yq[0]
    grad_second = a.T @ (2 / m * xq[0].T @ residual)  # (I - αH)ᵀ ∇L_q(w')
    grad_first = 2 / m * xq[0].T @ residual  # ∇L_q(w') alone

    adapted = maml.adapt(model, parameters_of(model), xs[0], ys[0], inner_lr=alpha, inner_steps=1)
    torch.testing.assert_close(adapted["weight"].detach().T, w_adapted)

    from metalib.tasks import TaskBatch

    tasks = TaskBatch(xs, ys, xq, yq, torch.ones(1), torch.zeros(1))
    for first_order, expected in ((False, grad_second), (True, grad_first)):
        params = clone_parameters(parameters_of(model))
        loss = maml.meta_loss(model, params, tasks, inner_lr=alpha, first_order=first_order)
        torch.testing.assert_close(loss.detach(), (residual**2).mean())
        (got,) = torch.autograd.grad(loss, [params["weight"]])
        torch.testing.assert_close(got.T, expected, msg=f"first_order={first_order}")


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_vmap_matches_loop(first_order, inner_steps):
    model, tasks = make(seed=2, n_tasks=5)
    kw = dict(inner_lr=0.02, inner_steps=inner_steps, first_order=first_order)
    loss_v, grads_v = meta_grad(maml.meta_loss, model, tasks, **kw)
    loss_l, grads_l = meta_grad(maml.meta_loss_loop, model, tasks, **kw)
    torch.testing.assert_close(loss_v, loss_l)
    for name in grads_v:
        torch.testing.assert_close(grads_v[name], grads_l[name])


def test_adapt_batch_matches_adapt_per_task():
    model, tasks = make(seed=3)
    params = parameters_of(model)
    batched = maml.adapt_batch(model, params, *tasks.support, inner_lr=0.03, inner_steps=2)
    for i in range(len(tasks)):
        single = maml.adapt(
            model, params, tasks.x_support[i], tasks.y_support[i], inner_lr=0.03, inner_steps=2
        )
        for name in params:
            torch.testing.assert_close(batched[name][i], single[name])


def test_zero_inner_steps_is_identity():
    model, tasks = make()
    params = parameters_of(model)
    adapted = maml.adapt(model, params, *tasks.task(0).support, inner_steps=0)
    assert adapted.keys() == params.keys()
    assert all(adapted[k] is params[k] for k in params)


def test_adapt_reduces_support_loss_and_keeps_shapes():
    model, tasks = make()
    params = parameters_of(model)
    x, y = tasks.x_support[0], tasks.y_support[0]
    before = F.mse_loss(model(x), y)
    adapted = maml.adapt(model, params, x, y, inner_lr=0.01, inner_steps=5)
    after = F.mse_loss(torch.func.functional_call(model, adapted, (x,)), y)
    assert after < before
    assert {k: v.shape for k, v in adapted.items()} == {k: v.shape for k, v in params.items()}


def test_first_order_differs_from_second_order_on_mlp():
    model, tasks = make(seed=4)
    _, second = meta_grad(maml.meta_loss, model, tasks, inner_lr=0.05, inner_steps=2)
    _, first = meta_grad(
        maml.meta_loss, model, tasks, inner_lr=0.05, inner_steps=2, first_order=True
    )
    gap = max((second[n] - first[n]).abs().max().item() for n in second)
    assert gap > 1e-4, f"first- and second-order gradients agree to {gap}"


def test_inner_lr_changes_the_result():
    model, tasks = make()
    params = parameters_of(model)
    a = maml.adapt(model, params, *tasks.task(0).support, inner_lr=0.01)
    b = maml.adapt(model, params, *tasks.task(0).support, inner_lr=0.02)
    assert not torch.allclose(a["net.4.bias"], b["net.4.bias"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_steps": -1}, "inner_steps=-1"),
        ({"inner_steps": 1.5}, "inner_steps=1.5"),
        ({"inner_lr": math.nan}, "inner_lr=nan"),
        ({"inner_lr": math.inf}, "inner_lr=inf"),
        ({"inner_lr": "0.1"}, "inner_lr='0.1'"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_value(kwargs, message):
    model, tasks = make()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        maml.adapt(model, parameters_of(model), *tasks.task(0).support, **kwargs)
    with pytest.raises(ValueError, match="inner_"):
        maml.meta_loss(model, parameters_of(model), tasks, **kwargs)


HEAD = ("net.4.weight", "net.4.bias")


def test_adapt_only_changes_only_the_named_parameters():
    model, tasks = make()
    params = parameters_of(model)
    adapted = maml.adapt(model, params, *tasks.task(0).support, inner_steps=3, adapt_only=HEAD)
    for name in params:
        changed = not torch.equal(adapted[name], params[name])
        assert changed == (name in HEAD), name


def test_anil_meta_gradient_reaches_the_body_through_the_head():
    """ANIL adapts only the head, but the head's inner gradient depends on the body's
    features, so the second-order meta-gradient of the body differs from first order."""
    model, tasks = make(seed=6)
    _, second = meta_grad(maml.meta_loss, model, tasks, inner_lr=0.1, adapt_only=HEAD)
    _, first = meta_grad(
        maml.meta_loss, model, tasks, inner_lr=0.1, adapt_only=HEAD, first_order=True
    )
    _, loop = meta_grad(maml.meta_loss_loop, model, tasks, inner_lr=0.1, adapt_only=HEAD)
    assert (second["net.0.weight"] - first["net.0.weight"]).abs().max() > 1e-6
    for name in second:
        torch.testing.assert_close(second[name], loop[name])


@pytest.mark.parametrize(
    ("adapt_only", "message"), [((), "non-empty"), ("net.4.bias", "non-empty"), (("nope",), "nope")]
)
def test_bad_adapt_only(adapt_only, message):
    model, tasks = make()
    with pytest.raises(ValueError, match=message):
        maml.adapt(model, parameters_of(model), *tasks.task(0).support, adapt_only=adapt_only)
