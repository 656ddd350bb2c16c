"""The growth factor of an inner step (``metalib.stability``) against cases whose answer is
known: a linear model, whose factor has a closed form, and a head adapted alone, where the
factor decides exactly whether repeated steps settle or blow up."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metalib.algorithms import maml
from metalib.models import SinusoidMLP, parameters_of
from metalib.stability import growth_factors, top_curvatures
from metalib.tasks import SinusoidTasks


def test_a_linear_model_has_the_closed_form_factor():
    """For y = w x + b the MSE Hessian is (2/K) [x 1]ᵀ[x 1]: the factor is max |1 − αλ|."""
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    params = parameters_of(model)
    xs, ys = torch.randn(3, 6, 1), torch.randn(3, 6, 1)
    groups = {"all": ["weight", "bias"]}
    for alpha in (0.05, 0.8, 2.0):
        got = growth_factors(model, params, xs, ys, inner_lr=alpha, groups=groups)["all"]
        design = torch.cat([xs, torch.ones_like(xs)], -1).double()
        eigenvalues = torch.linalg.eigvalsh(2 / 6 * design.mT @ design)
        expected = (1 - alpha * eigenvalues).abs().amax(-1)  # two points or more: full rank
        torch.testing.assert_close(got, expected)
    curvature = top_curvatures(model, params, xs, ys, groups=groups)["all"]
    torch.testing.assert_close(curvature, eigenvalues[:, -1])


def test_per_weight_steps_use_each_weights_own_step():
    """At x = 0 only the bias is curved (Hessian 2): its own step decides the factor, and a
    negative step grows it, as Meta-SGD's learned steps can."""
    model = nn.Linear(1, 1)
    params = parameters_of(model)
    xs, ys = torch.zeros(1, 4, 1), torch.ones(1, 4, 1)
    groups = {"all": ["weight", "bias"]}
    for bias_step, expected in ((0.25, 0.5), (1.5, 2.0), (-0.25, 1.5)):
        steps = {"weight": torch.full((1, 1), 9.0), "bias": torch.full((1,), bias_step)}
        got = growth_factors(model, params, xs, ys, inner_lr=steps, groups=groups)["all"]
        assert got.item() == pytest.approx(expected)


ALPHA = 0.15  # puts α λ_max on both sides of 2 for these untrained tasks


def test_the_factor_of_a_head_decides_whether_its_steps_settle():
    """The head's support loss is quadratic, so above 1 its loss grows and below 1 it falls."""
    torch.manual_seed(0)
    model = SinusoidMLP()
    params = parameters_of(model)
    tasks = SinusoidTasks().sample(
        12, k_shot=5, k_query=5, generator=torch.Generator().manual_seed(1)
    )
    head = model.head_names()
    xs, ys = tasks.support
    factors = growth_factors(model, params, xs, ys, inner_lr=ALPHA, groups={"head": head})["head"]
    assert (factors > 1.2).any() and (factors < 1).any(), factors
    curvature = top_curvatures(model, params, xs, ys, groups={"head": head})["head"]
    assert torch.equal(factors > 1, ALPHA * curvature > 2)  # the head's Hessian is PSD

    def support_loss(p, x, y):
        return F.mse_loss(functional_call(model, p, (x,)), y).item()

    for factor, x, y in zip(factors, xs, ys, strict=True):
        if 1 <= factor <= 1.2:
            continue  # grows too slowly to outweigh the modes that settle within 40 steps
        adapted = maml.adapt(model, params, x, y, inner_lr=ALPHA, inner_steps=40, adapt_only=head)
        before, after = support_loss(params, x, y), support_loss(adapted, x, y)
        assert (after > before) == (factor > 1), (factor.item(), before, after)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"groups": {"head": ["nope"]}}, "group 'head' names \\['nope'\\]"),
        ({"groups": {"head": []}}, "names no parameters"),
        ({"inner_lr": "fast"}, "inner_lr='fast' must be a number"),
        ({"inner_lr": {"weight": torch.ones(1, 1)}}, "no step sizes for \\['bias'\\]"),
        ({"x_support": torch.zeros(4, 1)}, "must both be \\(tasks, K, 1\\)"),
    ],
)
def test_bad_input_is_named(kwargs, message):
    model = nn.Linear(1, 1)
    call = {
        "x_support": torch.zeros(2, 4, 1),
        "inner_lr": 0.1,
        "groups": {"all": ["weight", "bias"]},
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        growth_factors(
            model,
            parameters_of(model),
            call.pop("x_support"),
            torch.zeros(2, 4, 1),
            **call,
        )


def test_a_first_hessian_in_a_fresh_process_warns_nothing():
    """torch 2.14's forward-mode AD compiles its decompositions with the deprecated
    ``torch.jit.script`` on first use; chapter 03 showed that warning in its outputs."""
    code = (
        "import torch\nfrom torch import nn\n"
        "from metalib.models import parameters_of\nfrom metalib.stability import growth_factors\n"
        "model = nn.Linear(1, 1)\n"
        "xs = torch.randn(2, 4, 1)\n"
        "groups = {'all': ['weight', 'bias']}\n"
        "growth_factors(model, parameters_of(model), xs, xs, inner_lr=0.1, groups=groups)\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr == ""
