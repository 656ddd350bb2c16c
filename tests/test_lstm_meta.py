import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalib.algorithms import lstm_meta, maml
from metalib.models import SinusoidMLP, clone_parameters, parameters_of
from metalib.tasks import SinusoidTasks


def setup(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    model = SinusoidMLP().to(dtype)
    tasks = SinusoidTasks().sample(
        4, k_shot=5, k_query=5, generator=torch.Generator().manual_seed(seed)
    )
    tasks = type(tasks)(*(t.to(dtype) for t in tasks))
    rule = lstm_meta.init_rule(8, generator=torch.Generator().manual_seed(seed))
    rule = {k: v.detach().to(dtype).requires_grad_() for k, v in rule.items()}
    return model, clone_parameters(parameters_of(model)), rule, tasks


def test_preprocessing_reads_sizes_on_a_log_scale_and_tiny_values_linearly():
    floor = math.exp(-10)
    x = torch.tensor([0.0, floor / 2, -floor / 2, 1.0, -1e3, 1e-3], requires_grad=True)
    got = lstm_meta.preprocess(x)
    expected = [
        [-1.0, 0.0],
        [-1.0, 0.5],
        [-1.0, -0.5],
        [0.0, 1.0],
        [math.log(1e3) / 10, -1.0],
        [math.log(1e-3) / 10, 1.0],
    ]
    torch.testing.assert_close(got, torch.tensor(expected))
    (slope,) = torch.autograd.grad(got.sum(), x)
    assert torch.isfinite(slope).all(), "no infinite slope at 0"


def test_gates_open_fully_and_fixed_input_gate_is_sgd():
    """Forget gate σ(40) = 1 and a constant input gate α: the rule is MAML's SGD."""
    model, params, rule, tasks = setup()
    with torch.no_grad():
        rule["forget.weight"].zero_()
        rule["input.weight"].zero_()
        rule["forget.bias"].fill_(40.0)
    alpha = float(torch.sigmoid(rule["input.bias"].detach()))
    assert alpha == pytest.approx(0.01)
    one = tasks.task(0)
    xs, ys = one.x_support[0], one.y_support[0]
    ours = lstm_meta.adapt(model, params, rule, xs, ys, inner_steps=3)
    sgd = maml.adapt(model, params, xs, ys, inner_lr=alpha, inner_steps=3, first_order=True)
    for name in params:
        torch.testing.assert_close(ours[name], sgd[name])


def test_one_step_by_hand():
    """θ₁ = σ(f)∘θ₀ − σ(i)∘g, with the gates computed from the equations written out."""
    model, params, rule, tasks = setup(1)
    one = tasks.task(0)
    xs, ys = one.x_support[0], one.y_support[0]
    loss = F.mse_loss(functional_call(model, params, (xs,)), ys)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    hidden = rule["lstm.weight_h"].shape[0]
    got = lstm_meta.adapt(model, params, rule, xs, ys, inner_steps=1)
    for name, theta in params.items():
        g = grads[name].reshape(-1, 1)
        features = torch.cat(
            [lstm_meta.preprocess(g[:, 0]), lstm_meta.preprocess(loss).expand(len(g), 2)], 1
        )
        # The LSTM's first step from zero state: c = σ(i)·tanh(g), h = σ(o)·tanh(c).
        pre = features @ rule["lstm.weight_x"] + rule["lstm.bias"]
        i, _, cand, o = pre.split(hidden, dim=1)
        h = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(cand))
        inputs = torch.cat([h, theta.reshape(-1, 1), torch.zeros(len(g), 1)], 1)
        forget = torch.sigmoid(inputs @ rule["forget.weight"] + rule["forget.bias"])
        step = torch.sigmoid(inputs @ rule["input.weight"] + rule["input.bias"])
        expected = forget * theta.reshape(-1) - step * g[:, 0]
        torch.testing.assert_close(got[name].reshape(-1), expected)


@pytest.mark.parametrize("first_order", [True, False])
def test_vmapped_meta_gradient_matches_the_per_task_loop_in_float64(first_order):
    model, params, rule, tasks = setup(2, torch.float64)
    kwargs = {"inner_steps": 3, "first_order": first_order}
    leaves = [*params.values(), *rule.values()]
    fast = lstm_meta.meta_loss(model, params, rule, tasks, **kwargs)
    slow = lstm_meta.meta_loss_loop(model, params, rule, tasks, **kwargs)
    torch.testing.assert_close(fast, slow)
    for a, b in zip(torch.autograd.grad(fast, leaves), torch.autograd.grad(slow, leaves)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_every_tensor_of_the_rule_and_the_start_learns():
    model, params, rule, tasks = setup(3)
    loss = lstm_meta.meta_loss(model, params, rule, tasks, inner_steps=2)
    grads = torch.autograd.grad(loss, [*params.values(), *rule.values()])
    names = [*params, *rule]
    assert all(g.abs().sum() > 0 for g in grads), [n for n, g in zip(names, grads) if not g.any()]


def test_second_order_terms_change_the_meta_gradient():
    model, params, rule, tasks = setup(4, torch.float64)
    grads = {}
    for first_order in (True, False):
        loss = lstm_meta.meta_loss(model, params, rule, tasks, first_order=first_order)
        grads[first_order] = torch.autograd.grad(loss, list(params.values()))
    assert any(not torch.allclose(a, b) for a, b in zip(grads[True], grads[False]))


def test_trajectory_and_zero_steps():
    model, params, rule, tasks = setup()
    one = tasks.task(0)
    path = lstm_meta.adapt(
        model, params, rule, one.x_support[0], one.y_support[0], inner_steps=2, trajectory=True
    )
    assert len(path) == 3 and all(torch.equal(path[0][n], params[n]) for n in params)
    last = lstm_meta.adapt(model, params, rule, one.x_support[0], one.y_support[0], inner_steps=2)
    assert all(torch.equal(path[2][n], last[n]) for n in params)


def test_bad_rules_and_settings_are_refused_by_name():
    _, params, rule, _ = setup()
    weights, back = lstm_meta.from_state({**params, **lstm_meta.to_state(rule)})
    assert set(weights) == set(params) and lstm_meta.hidden_size(back) == 8
    with pytest.raises(ValueError, match=r"forget\.bias"):
        lstm_meta.hidden_size({**back, "forget.bias": torch.tensor(float("nan"))})
    with pytest.raises(ValueError, match=r"input\.weight.*\(10,\)"):
        lstm_meta.hidden_size({**back, "input.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="expected"):
        lstm_meta.hidden_size({k: v for k, v in back.items() if k != "lstm.bias"})
    with pytest.raises(ValueError, match=r"inner_lr=1\.5"):
        lstm_meta.init_rule(inner_lr=1.5)
    with pytest.raises(ValueError, match="hidden=0"):
        lstm_meta.init_rule(0)


def test_rollout_records_the_gates_of_every_step():
    model, params, rule, tasks = setup()
    one = tasks.task(0)
    x, y = one.x_support[0], one.y_support[0]
    run = lstm_meta.rollout(model, params, rule, x, y, inner_steps=3)
    n = sum(p.numel() for p in params.values())
    assert run.forget.shape == run.input.shape == (3, n)
    # the untrained rule: forget gate about σ(5), input gate about its inner_lr, 0.01
    assert run.forget.mean().item() == pytest.approx(
        torch.sigmoid(torch.tensor(5.0)).item(), abs=0.01
    )
    assert run.input.mean().item() == pytest.approx(0.01, abs=0.002)
    # each step is the update its gates say: θ_1 = f ∘ θ_0 − i ∘ ∇
    grads = torch.func.grad(lambda p: F.mse_loss(functional_call(model, p, (x,)), y))(params)
    by_hand = run.forget[0] * lstm_meta.flatten(params) - run.input[0] * lstm_meta.flatten(grads)
    torch.testing.assert_close(lstm_meta.flatten(run.params[1]), by_hand)
    empty = lstm_meta.rollout(model, params, rule, x, y, inner_steps=0)
    assert empty.forget.shape == (0, n) and len(empty.params) == 1


def test_losses_by_step_are_the_rollouts_query_losses():
    model, params, rule, tasks = setup()
    per_task = lstm_meta.losses_by_step(model, params, rule, tasks, max_steps=3, chunk=3)
    assert per_task.shape == (4, len(tasks)) and not per_task.requires_grad
    for i in range(len(tasks)):
        path = lstm_meta.adapt(
            model,
            params,
            rule,
            tasks.x_support[i],
            tasks.y_support[i],
            inner_steps=3,
            trajectory=True,
        )
        expected = [
            F.mse_loss(functional_call(model, p, (tasks.x_query[i],)), tasks.y_query[i])
            for p in path
        ]
        torch.testing.assert_close(per_task[:, i], torch.stack(expected).detach())
    with pytest.raises(ValueError, match="max_steps=-1"):
        lstm_meta.losses_by_step(model, params, rule, tasks, max_steps=-1)


def test_the_sinusoid_recipe_learns_a_rule_that_beats_its_untrained_self():
    """Smoke test: a short run of ``sinusoid-lstm-meta`` adapts better than the untrained
    network with the untrained rule (SGD at 0.01 with a slight shrinkage)."""
    from metalib.recipes import sinusoid

    config = sinusoid.config(
        "sinusoid-lstm-meta", meta_steps=150, meta_batch_size=25, rule_hidden=8
    )
    trained = sinusoid.train(config, device="cpu", progress=False)
    learner = sinusoid.learner_of(trained)
    assert learner.rule is not None and lstm_meta.hidden_size(learner.rule) == 8
    untrained = sinusoid.make_learner(config, torch.device("cpu"))
    after = sinusoid.mse_by_step(learner, n_tasks=200, max_steps=5).mean[5]
    before = sinusoid.mse_by_step(untrained, n_tasks=200, max_steps=5).mean[5]
    assert after < 0.8 * before, (after, before)


def test_the_recipe_refuses_what_has_no_meaning_for_it(tmp_path):
    from metalib import recipes
    from metalib.recipes import sinusoid

    with pytest.raises(ValueError, match=r"rule_hidden=8.*method='maml'"):
        sinusoid.config("sinusoid-maml", rule_hidden=8)
    with pytest.raises(ValueError, match=r"inner_lr=1\.5.*\(0, 1\)"):
        sinusoid.config("sinusoid-lstm-meta", inner_lr=1.5)
    config = sinusoid.config("sinusoid-lstm-meta", meta_steps=1, meta_batch_size=2, rule_hidden=4)
    run = sinusoid.train(config, device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"inner_lr=0\.1.*learned rule"):
        sinusoid.mse_by_step(run, n_tasks=10, inner_lr=0.1)
    state = sinusoid.state_dict(run)
    with pytest.raises(ValueError, match=r"4 hidden units.*rule_hidden=5"):
        sinusoid.restore(sinusoid.config("sinusoid-lstm-meta", rule_hidden=5), state, "cpu")
    with pytest.raises(ValueError, match="update rule, which recipe sinusoid-maml"):
        sinusoid.restore(sinusoid.config("sinusoid-maml"), state, "cpu")
    recipes.save(run, tmp_path / "rule")
    back = sinusoid.learner_of(recipes.load(tmp_path / "rule"))
    assert all(torch.equal(back.rule[k], run.params[lstm_meta.PREFIX + k]) for k in back.rule)


def test_gates_by_tensor_average_the_rollouts_gates():
    model, params, rule, tasks = setup()
    summary = lstm_meta.gates_by_tensor(model, params, rule, tasks, inner_steps=2)
    assert list(summary.step_size) == list(params) == list(summary.decay)
    runs = [
        lstm_meta.rollout(
            model, params, rule, tasks.x_support[i], tasks.y_support[i], inner_steps=2
        )
        for i in range(len(tasks))
    ]
    first = next(iter(params))
    n = params[first].numel()  # the first tensor's entries come first in the flat order
    expected = torch.stack([r.input[:, :n].mean(-1) for r in runs]).mean(0)
    torch.testing.assert_close(summary.step_size[first], expected.detach())
    decay = torch.stack([1 - r.forget[:, :n].mean(-1) for r in runs]).mean(0)
    torch.testing.assert_close(summary.decay[first], decay.detach())
