import pytest
import torch

from metalib.algorithms import maml, meta_sgd
from metalib.models import SinusoidMLP, clone_parameters, parameters_of
from metalib.tasks import SinusoidTasks


def setup(seed=0):
    torch.manual_seed(seed)
    model = SinusoidMLP()
    tasks = SinusoidTasks().sample(
        5, k_shot=5, k_query=5, generator=torch.Generator().manual_seed(seed)
    )
    return model, tasks


def test_frozen_step_sizes_equal_to_alpha_give_maml():
    model, tasks = setup()
    params = clone_parameters(parameters_of(model))
    lrs = meta_sgd.init_inner_lr(params, value=0.03)
    loss_sgd = maml.meta_loss(model, params, tasks, inner_lr=lrs, inner_steps=2)
    grads_sgd = torch.autograd.grad(loss_sgd, list(params.values()))
    loss_maml = maml.meta_loss(model, params, tasks, inner_lr=0.03, inner_steps=2)
    grads_maml = torch.autograd.grad(loss_maml, list(params.values()))
    torch.testing.assert_close(loss_sgd, loss_maml)
    for a, b in zip(grads_sgd, grads_maml):
        torch.testing.assert_close(a, b)


def test_step_sizes_receive_the_hand_computed_gradient():
    """One step: φ = θ − α∘g, so ∂L_q/∂α = −g ∘ ∇_φ L_q(φ)."""
    model, tasks = setup(1)
    params = clone_parameters(parameters_of(model))
    lrs = meta_sgd.init_inner_lr(params, value=0.01)
    one = tasks.task(0)
    xs, ys, xq, yq = one.x_support[0], one.y_support[0], one.x_query[0], one.y_query[0]
    loss = maml.task_loss(model, params, xs, ys, xq, yq, inner_lr=lrs)
    got = torch.autograd.grad(loss, list(lrs.values()))
    support = torch.nn.functional.mse_loss(torch.func.functional_call(model, params, (xs,)), ys)
    g = torch.autograd.grad(support, list(params.values()))
    adapted = {
        n: (p - 0.01 * gi).detach().requires_grad_() for (n, p), gi in zip(params.items(), g)
    }
    query = torch.nn.functional.mse_loss(torch.func.functional_call(model, adapted, (xq,)), yq)
    g_query = torch.autograd.grad(query, list(adapted.values()))
    for a, gi, gq in zip(got, g, g_query):
        torch.testing.assert_close(a, -gi * gq)


def test_state_round_trip_and_checks():
    model, _ = setup()
    params = parameters_of(model)
    lrs = meta_sgd.init_inner_lr(params, value=0.02)
    weights, back = meta_sgd.from_state({**model.state_dict(), **meta_sgd.to_state(lrs)})
    assert set(weights) == set(params) and set(back) == set(params)
    meta_sgd.check_inner_lr(back, params)
    back["net.0.bias"] = back["net.0.bias"] * float("nan")
    with pytest.raises(ValueError, match=r"net\.0\.bias"):
        meta_sgd.check_inner_lr(back, params)
    with pytest.raises(ValueError, match="differ from params"):
        meta_sgd.check_inner_lr({"w": torch.ones(1)}, params)
    with pytest.raises(ValueError, match="value=nan"):
        meta_sgd.init_inner_lr(params, value=float("nan"))


def test_missing_step_size_is_named():
    model, tasks = setup()
    params = parameters_of(model)
    lrs = meta_sgd.init_inner_lr(params)
    del lrs["net.2.weight"]
    with pytest.raises(ValueError, match=r"net\.2\.weight"):
        maml.adapt(model, params, *tasks.task(0).support, inner_lr=lrs)


def test_step_sizes_must_be_tensors():
    model, tasks = setup()
    with pytest.raises(ValueError, match="map parameter names to tensors"):
        maml.adapt(
            model, parameters_of(model), *tasks.task(0).support, inner_lr={"net.0.weight": 0.01}
        )


def test_clipped_steps_are_projected_after_every_outer_step():
    """With a large outer step some learned step sizes leave [0, 0.05]; projected, none do."""
    from metalib.recipes import sinusoid

    free, kept = (
        sinusoid.train(
            sinusoid.config(
                "sinusoid-meta-sgd",
                meta_steps=30,
                meta_batch_size=8,
                outer_lr=0.05,
                clip_steps=0.05 if projected else 0.0,
            ),
            device="cpu",
            progress=False,
        )
        for projected in (False, True)
    )

    def extremes(run):
        steps = torch.cat([v.flatten() for v in sinusoid.learner_of(run).inner_lr.values()])
        return steps.min().item(), steps.max().item()

    assert extremes(free)[0] < 0 and extremes(free)[1] > 0.05
    low, high = extremes(kept)
    assert low == 0.0 and high == pytest.approx(0.05), (low, high)  # both reached, none crossed


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "maml", "clip_steps": 0.1}, "clip_steps=0.1 is for learned step sizes"),
        ({"method": "meta-sgd", "clip_steps": 0.1, "inner_lr": 0.5}, "inside \\[0, 0.1\\]"),
        ({"method": "meta-sgd", "clip_steps": -1.0}, "clip_steps=-1.0"),
    ],
)
def test_clip_steps_refuses_what_it_cannot_keep(overrides, message):
    from metalib.recipes import sinusoid

    with pytest.raises(ValueError, match=message):
        sinusoid.SinusoidConfig(**overrides)
