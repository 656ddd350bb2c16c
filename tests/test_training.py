import itertools
import math

import pytest
import torch

from metalib import runtime
from metalib.evaluation import held_out_tasks
from metalib.models import SinusoidMLP, parameters_of
from metalib.recipes import sinusoid
from metalib.recipes.sinusoid import SinusoidConfig
from metalib.training import evaluate, losses_by_step, mean_ci95, train_loop


def test_train_loop_stops_on_nan_naming_the_step():
    w = torch.zeros(1, requires_grad=True)

    def step_loss(step):
        return (w - 1).pow(2).sum() * (math.nan if step == 3 else 1.0)

    with pytest.raises(FloatingPointError, match="outer step 3"):
        train_loop(step_loss, {"w": w}, meta_steps=10, progress=False)


def test_train_loop_minimises_and_callback_can_stop():
    w = torch.zeros(1, requires_grad=True)
    seen = []
    history = train_loop(
        lambda s: (w - 1).pow(2).sum(), {"w": w}, meta_steps=200, outer_lr=0.05, progress=False
    )
    assert history.steps == 200 and history.losses[-1] < 0.01 * history.losses[0]
    history = train_loop(
        lambda s: (w - 1).pow(2).sum(),
        {"w": w},
        meta_steps=50,
        callback=lambda s, loss: seen.append(s) or s == 4,
        progress=False,
    )
    assert seen == [0, 1, 2, 3, 4] and history.stopped_early and history.steps == 5


@pytest.mark.parametrize("kwargs", [{"meta_steps": -1}, {"meta_steps": 5, "outer_lr": math.inf}])
def test_train_loop_bad_input(kwargs):
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(
        ValueError, match=next(iter(kwargs)) if "outer_lr" not in kwargs else "outer_lr"
    ):
        train_loop(lambda s: w.sum(), {"w": w}, progress=False, **kwargs)


@pytest.mark.parametrize(
    ("schedule", "last_over_first"), [("constant", (0.9, 1.1)), ("cosine", (0, 0.05))]
)
def test_outer_lr_schedule_shapes_the_step_sizes(schedule, last_over_first):
    w = torch.zeros(1, requires_grad=True)
    seen = [0.0]
    train_loop(
        lambda s: (w - 100).pow(2).sum(),  # far minimum: Adam's steps are about outer_lr each
        {"w": w},
        meta_steps=10,
        outer_lr=0.1,
        outer_lr_schedule=schedule,
        callback=lambda s, loss: seen.append(w.item()) and False,
        progress=False,
    )
    moves = [b - a for a, b in itertools.pairwise(seen)]
    low, high = last_over_first
    assert low <= moves[-1] / moves[0] <= high


def test_halving_schedule_halves_every_halve_every_steps():
    w = torch.zeros(1, requires_grad=True)
    seen = [0.0]
    train_loop(
        lambda s: (w - 100).pow(2).sum(),
        {"w": w},
        meta_steps=12,
        outer_lr=0.1,
        outer_lr_schedule="halving",
        halve_every=4,
        callback=lambda s, loss: seen.append(w.item()) and False,
        progress=False,
    )
    moves = [b - a for a, b in itertools.pairwise(seen)]  # about 0.1, 0.05, 0.025 per block
    for block in range(3):
        expected = 0.1 * 0.5**block
        for move in moves[4 * block + 1 : 4 * block + 4]:  # Adam's first step is exact
            assert move == pytest.approx(expected, rel=0.05)
    with pytest.raises(ValueError, match="halve_every=0"):
        train_loop(lambda s: w.sum(), {"w": w}, meta_steps=1, halve_every=0, progress=False)


def test_unknown_outer_lr_schedule_is_refused():
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError, match="outer_lr_schedule='step'"):
        train_loop(
            lambda s: w.sum(), {"w": w}, meta_steps=1, outer_lr_schedule="step", progress=False
        )
    with pytest.raises(ValueError, match="outer_lr_schedule='linear'"):
        SinusoidConfig(outer_lr_schedule="linear")


def test_mean_ci95_matches_the_formula():
    values = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    mean, ci = mean_ci95(values)
    assert mean.item() == pytest.approx(3.0)
    assert ci.item() == pytest.approx(1.96 * values.std().item() / 2)
    with pytest.raises(ValueError, match="at least 2"):
        mean_ci95(values[:1])


def test_losses_by_step_starts_at_the_unadapted_loss_and_decreases():
    torch.manual_seed(0)
    model = SinusoidMLP()
    tasks = held_out_tasks(50, k_shot=10, k_query=20)
    per_task = losses_by_step(model, parameters_of(model), tasks, max_steps=3, inner_lr=0.01)
    assert per_task.shape == (4, 50)
    with torch.no_grad():
        zero_step = ((model(tasks.x_query) - tasks.y_query) ** 2).mean(dim=(1, 2))
    torch.testing.assert_close(per_task[0], zero_step)
    curve = evaluate(model, parameters_of(model), tasks, max_steps=3)
    assert curve.mean[3] < curve.mean[0] and curve.n_tasks == 50


def test_short_maml_training_beats_the_untrained_network():
    """Smoke test: a few hundred outer steps already adapt far better than no training."""
    config = SinusoidConfig(meta_steps=300, meta_batch_size=25, seed=1)
    trained = sinusoid.train(config, device="cpu", progress=False)
    untrained = SinusoidMLP()
    after = sinusoid.mse_by_step(trained.model, n_tasks=200).mean[10]
    before = sinusoid.mse_by_step(untrained, n_tasks=200).mean[10]
    zero_predictor = held_out_tasks(200).y_query.pow(2).mean().item()
    assert after < 0.75 * zero_predictor and after < before, (after, before, zero_predictor)


def test_diverged_tasks_are_counted_and_reported_as_json_null():
    torch.manual_seed(0)
    model = SinusoidMLP()
    tasks = held_out_tasks(50, k_shot=5)
    curve = evaluate(model, parameters_of(model), tasks, inner_lr=5.0, max_steps=3)
    assert curve.diverged[0] == 0 and curve.diverged[3] > 0
    report = curve.to_dict((0, 3))
    assert report["3"]["diverged_tasks"] == curve.diverged[3]
    assert report["0"]["mean"] == curve.mean[0]
    if not math.isfinite(curve.mean[3]):
        assert report["3"]["mean"] is None


@pytest.mark.parametrize("method", ["fomaml", "reptile", "meta-sgd", "anil"])
def test_short_training_of_each_method_lowers_the_query_error(method):
    """Smoke test: a few hundred outer steps adapt better than the untrained network."""
    from metalib.recipes.sinusoid import make_learner

    config = SinusoidConfig.for_method(method, meta_steps=200, meta_batch_size=50, seed=2)
    trained = sinusoid.train(config, device="cpu", progress=False)
    untrained = make_learner(config, torch.device("cpu"))
    after = sinusoid.mse_by_step(sinusoid.learner_of(trained), n_tasks=200, max_steps=1).mean[1]
    before = sinusoid.mse_by_step(untrained, n_tasks=200, max_steps=1).mean[1]
    assert after < 0.8 * before, (method, after, before)


def test_outer_steps_per_second_runs_the_meta_loss_it_is_given():
    from metalib.algorithms import maml
    from metalib.recipes.sinusoid import outer_steps_per_second

    calls = []

    def counting_meta_loss(*args, **kwargs):
        calls.append(kwargs["inner_steps"])
        return maml.meta_loss(*args, **kwargs)

    config = SinusoidConfig(meta_batch_size=4, inner_steps=2)
    rate = outer_steps_per_second(counting_meta_loss, config, seconds=0.01, device="cpu")
    assert math.isfinite(rate) and rate > 0
    assert len(calls) >= 6 and set(calls) == {2}  # 3 warm-up steps + at least 3 timed
    with pytest.raises(ValueError, match="seconds=0"):
        outer_steps_per_second(maml.meta_loss, config, seconds=0)


def test_a_notebook_saves_the_progress_bar_as_it_ended():
    """In a kernel the bar is one plain-text output updated in place, so the executed
    notebook keeps the finished bar (tqdm's widget is saved as first drawn: 0%)."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    cell = nbformat.v4.new_code_cell(
        "import time, torch\n"
        "from metalib.training import train_loop\n"
        "w = torch.zeros(1, requires_grad=True)\n"
        "def loss(step):\n"
        "    time.sleep(0.02)\n"
        "    return (w - 1).pow(2).sum()\n"
        "history = train_loop(loss, {'w': w}, meta_steps=60, description='demo')"
    )
    notebook = nbformat.v4.new_notebook(cells=[cell])
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    assert [o.output_type for o in outputs] == ["display_data"], outputs
    assert set(outputs[0].data) == {"text/plain"}
    line = outputs[0].data["text/plain"]
    assert line.startswith("demo: 100%") and "60/60" in line, line


def test_max_grad_norm_scales_the_gradient_down_before_the_step():
    """With plain SGD-like Adam the first step moves every weight by outer_lr whatever the
    gradient's size, so the clipping is seen in the gradient the optimiser was given."""
    w = torch.tensor([3.0, 4.0], requires_grad=True)
    seen = []

    def loss(step):
        return (10 * w).pow(2).sum() / 2  # gradient 100 · w, norm 500

    def record(step, value):
        seen.append(w.grad.norm().item())

    train_loop(loss, {"w": w}, meta_steps=1, max_grad_norm=0.25, callback=record, progress=False)
    assert seen == [pytest.approx(0.25)]
    w2 = torch.tensor([3.0, 4.0], requires_grad=True)
    seen.clear()
    train_loop(
        lambda s: (10 * w2).pow(2).sum() / 2,
        {"w": w2},
        meta_steps=1,
        callback=lambda s, v: seen.append(w2.grad.norm().item()),
        progress=False,
    )
    assert seen == [pytest.approx(500.0)]
    with pytest.raises(ValueError, match="max_grad_norm=-1"):
        train_loop(loss, {"w": w}, meta_steps=1, max_grad_norm=-1, progress=False)


def test_a_run_resumed_on_another_device_records_each_part(monkeypatch):
    w = torch.zeros(1, requires_grad=True)
    saved = []

    def run(**kwargs):
        return train_loop(
            lambda s: (w - 1).pow(2).sum(),
            {"w": w},
            meta_steps=6,
            progress=False,
            save_state=saved.append,
            **kwargs,
        )

    here = runtime.describe_device(torch.device("cpu"))
    first = run(callback=lambda s, loss: s == 2)  # 3 steps here
    stopped = saved[-1]
    assert first.stopped_early and first.parts == [[here, 3]] == stopped["parts"]
    again = run(resume=stopped)  # the same device: one stretch of 6 steps
    assert again.parts == [[here, 6]] and runtime.describe_parts(again.parts) == here

    monkeypatch.setattr(runtime, "describe_device", lambda device: "cuda (Test GPU)")
    elsewhere = run(resume=stopped)  # the state after 3 steps, resumed "on a GPU"
    assert elsewhere.steps == 6 and elsewhere.parts == [[here, 3], ["cuda (Test GPU)", 3]]
    described = runtime.describe_parts(elsewhere.parts)
    assert described == f"{here} for 3 steps, then cuda (Test GPU) for 3 steps"
    assert runtime.device_kinds(described) == {"cpu", "cuda"}

    older = {k: v for k, v in stopped.items() if k != "parts"}  # a state from before parts
    assert run(resume=older).parts == [["not recorded", 3], ["cuda (Test GPU)", 3]]
