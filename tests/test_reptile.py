import pytest
import torch
import torch.nn.functional as F

from metalib.algorithms import reptile
from metalib.models import SinusoidMLP, clone_parameters, parameters_of
from metalib.tasks import SinusoidTasks


def setup(seed=0, n_tasks=6):
    torch.manual_seed(seed)
    model = SinusoidMLP().double()
    tasks = SinusoidTasks().sample(
        n_tasks, k_shot=5, k_query=5, generator=torch.Generator().manual_seed(seed)
    )
    return model, type(tasks)(*(t.double() for t in tasks))


def test_one_inner_step_is_a_scaled_gradient_step():
    """With one SGD step, θ − φ_i = α ∇L_i(θ), so the direction is α · mean_i ∇L_i(θ)."""
    model, tasks = setup()
    params = clone_parameters(parameters_of(model))
    alpha = 0.02
    x = torch.cat([tasks.x_support, tasks.x_query], 1)
    y = torch.cat([tasks.y_support, tasks.y_query], 1)
    per_task = [
        F.mse_loss(torch.func.functional_call(model, params, (x[i],)), y[i])
        for i in range(len(tasks))
    ]
    grads = torch.autograd.grad(torch.stack(per_task).mean(), list(params.values()))
    got = reptile.direction(model, params, tasks, inner_lr=alpha, inner_steps=1)
    for (name, _), g in zip(params.items(), grads):
        torch.testing.assert_close(got[name], alpha * g)


def test_surrogate_gradient_is_the_direction():
    model, tasks = setup(1)
    params = clone_parameters(parameters_of(model))
    loss = reptile.surrogate_loss(model, params, tasks, inner_lr=0.01, inner_steps=3)
    grads = torch.autograd.grad(loss, list(params.values()))
    expected = reptile.direction(model, params, tasks, inner_lr=0.01, inner_steps=3)
    for name, g in zip(params, grads):
        torch.testing.assert_close(g, expected[name])


def test_more_inner_steps_change_the_direction():
    model, tasks = setup(2)
    params = parameters_of(model)
    one = reptile.direction(model, params, tasks, inner_steps=1)
    five = reptile.direction(model, params, tasks, inner_steps=5)
    assert not torch.allclose(one["net.4.bias"], five["net.4.bias"])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"inner_steps": 0}, "at least one inner step"),
        ({"inner_steps": -2}, "inner_steps=-2"),
        ({"inner_lr": float("inf")}, "inner_lr=inf"),
    ],
)
def test_bad_input(kwargs, message):
    model, tasks = setup()
    with pytest.raises(ValueError, match=message):
        reptile.direction(model, parameters_of(model), tasks, **kwargs)
