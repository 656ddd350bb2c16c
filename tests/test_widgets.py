import base64

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalib import evaluation, widgets
from metalib.data import omniglot
from metalib.models import SinusoidMLP
from metalib.recipes import metric_omniglot
from metalib.widgets import AdaptationPanel


@pytest.fixture
def panel():
    torch.manual_seed(0)
    return AdaptationPanel({"MAML": SinusoidMLP(), "pretrained": SinusoidMLP()})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("k_shot", 12),
        ("inner_steps", 5),
        ("inner_lr", 0.05),
        ("amplitude", 4.5),
        ("phase", 2.5),
        ("support_range", (-5.0, 0.0)),
    ],
)
def test_moving_a_slider_changes_the_summary_and_the_plot(panel, name, value):
    summary, image = panel.summary.value, panel.image.value
    assert summary.startswith("K=5, 1 inner steps") and image[:4] == b"\x89PNG"
    panel.controls[name].value = value
    assert panel.summary.value != summary, f"{name} did not change the summary line"
    assert panel.image.value != image, f"{name} did not change the plot"


def test_more_inner_steps_lower_the_query_error(panel):
    panel.controls["inner_steps"].value = 0
    before = panel.mse()
    panel.controls["inner_steps"].value = 20
    panel.controls["inner_lr"].value = 0.1
    after = panel.mse()
    assert all(after[name] < before[name] for name in before)


def test_empty_support_range_is_refused(panel):
    with pytest.raises(ValueError, match="support_range"):
        panel.controls["support_range"].value = (1.0, 1.0)


def test_panel_needs_a_model():
    with pytest.raises(ValueError, match="at least one model"):
        AdaptationPanel({})


def test_learners_adapt_as_trained_and_the_method_picker_redraws():
    from metalib.recipes.sinusoid import SinusoidConfig, make_learner

    anil = make_learner(SinusoidConfig.for_method("anil"), torch.device("cpu"))
    meta_sgd = make_learner(SinusoidConfig.for_method("meta-sgd"), torch.device("cpu"))
    panel = AdaptationPanel({"ANIL": anil, "Meta-SGD": meta_sgd})
    assert "Meta-SGD: learned step sizes" in panel.summary.value
    _, _, inner_lr, adapt_only = panel._adaptation("ANIL")
    assert adapt_only == anil.model.head_names() and inner_lr == 0.01
    assert isinstance(panel._adaptation("Meta-SGD")[2], dict)
    image = panel.image.value
    panel.controls["method"].value = "ANIL"
    assert panel.image.value != image
    before = panel.mse()["Meta-SGD"]
    panel.controls["inner_lr"].value = 0.1  # Meta-SGD's learned step sizes do not move
    assert panel.mse()["Meta-SGD"] == before


def test_a_learned_update_rule_takes_its_own_steps_in_the_panel():
    from metalib.algorithms import lstm_meta
    from metalib.recipes.sinusoid import SinusoidConfig, make_learner

    learner = make_learner(
        SinusoidConfig.for_method("lstm-meta", rule_hidden=4), torch.device("cpu")
    )
    panel = AdaptationPanel({"LSTM": learner})
    assert "LSTM: learned update rule" in panel.summary.value
    panel.controls["inner_steps"].value = 3
    task = panel.task()
    adapted = lstm_meta.adapt(
        learner.model,
        learner.params,
        learner.rule,
        task.x_support[0],
        task.y_support[0],
        inner_steps=3,
    )
    with torch.no_grad():
        expected = F.mse_loss(
            functional_call(learner.model, adapted, (task.x_query[0],)), task.y_query[0]
        )
    assert panel.mse()["LSTM"] == pytest.approx(expected.item())
    panel.controls["inner_lr"].value = 0.1  # the slider's α is not the rule's
    assert panel.mse()["LSTM"] == pytest.approx(expected.item())


@pytest.fixture
def episode_panel(small_omniglot, tmp_path):
    from metalib.data import omniglot, splits
    from metalib.widgets import EpisodePanel

    data_dir, specs = small_omniglot
    data = omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    return EpisodePanel(data, splits.class_split(data, scheme="lake", split="train"))


@pytest.mark.parametrize(("name", "value"), [("n_way", 3), ("k_shot", 4), ("k_query", 2)])
def test_episode_sliders_change_the_episode(episode_panel, name, value):
    image = episode_panel.image.value
    assert image[:4] == b"\x89PNG" and episode_panel.episode.x_support.shape == (1, 5, 1, 28, 28)
    episode_panel.controls[name].value = value
    assert episode_panel.image.value != image
    x_support, y_support, x_query, _ = episode_panel.episode
    n_way, k_shot, k_query = (
        episode_panel.controls[n].value for n in ("n_way", "k_shot", "k_query")
    )
    assert x_support.shape[1] == n_way * k_shot and x_query.shape[1] == n_way * k_query
    assert y_support.max() == n_way - 1


def test_new_episode_button_draws_other_classes(episode_panel):
    summary, support = episode_panel.summary.value, episode_panel.episode.x_support
    episode_panel.controls["new"].click()
    assert episode_panel.summary.value != summary and summary.count("character") == 5
    assert not torch.equal(episode_panel.episode.x_support, support)


@pytest.fixture
def accuracy_panel(small_omniglot, tmp_path):
    from metalib.data import episodes, omniglot, splits
    from metalib.models import ConvNet, parameters_of
    from metalib.widgets import AccuracyPanel

    data_dir, specs = small_omniglot
    data = omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    sampler = episodes.EpisodeSampler(
        data, splits.class_split(data, scheme="lake", split="train"), k_query=2
    )
    torch.manual_seed(0)
    model = ConvNet(5, hidden=8)
    test = sampler.sample(6, generator=torch.Generator().manual_seed(0))
    return AccuracyPanel(model, parameters_of(model), test, inner_lr=0.4, inner_steps=1)


@pytest.mark.parametrize(("name", "value"), [("inner_steps", 4), ("inner_lr", 0.1)])
def test_accuracy_panel_redraws_for_each_slider(accuracy_panel, name, value):
    summary, image = accuracy_panel.summary.value, accuracy_panel.image.value
    assert "6 test episodes" in summary and image[:4] == b"\x89PNG"
    accuracy_panel.controls[name].value = value
    assert accuracy_panel.summary.value != summary and accuracy_panel.image.value != image
    assert len(accuracy_panel.curve.mean) == accuracy_panel.controls["inner_steps"].value + 1


def test_training_monitor_redraws_and_evaluates_on_schedule():
    from metalib.widgets import TrainingMonitor

    calls = []
    monitor = TrainingMonitor(
        every=5, evaluate=lambda: calls.append(1) or 0.5 + 0.1 * len(calls), eval_every=4
    )
    assert monitor.image.value == b""
    for step in range(10):
        assert monitor(step, 2.0 - 0.1 * step) is False
        if step == 4:
            first = monitor.image.value
            assert first[:4] == b"\x89PNG" and "step 5: loss 1.600" in monitor.summary.value
    assert monitor.accuracy == {4: 0.6, 8: 0.7} and len(monitor.losses) == 10
    assert monitor.image.value != first and "test accuracy 0.700 at step 8" in monitor.summary.value
    with pytest.raises(ValueError, match="every=0"):
        TrainingMonitor(every=0)


def test_prototype_panel_redraws_for_new_ways_and_shots(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    data = omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    config = metric_omniglot.MetricConfig(scheme="lake")
    sampler = evaluation.evaluation_sampler(data, scheme="lake")
    panel = widgets.PrototypePanel(config.model(), config, sampler, episodes=4)
    first_image, first_score = panel.image.value, panel.score
    assert first_image and "5-way 1-shot" in panel.summary.value
    panel.controls["n_way"].value = 3
    assert "3-way 1-shot" in panel.summary.value and panel.image.value != first_image
    panel.controls["k_shot"].value = 2
    assert "3-way 2-shot" in panel.summary.value and panel.score != first_score
    assert panel.controls["n_way"].max == 8  # lake test classes in the tiny archive


@pytest.fixture
def context_panel():
    from metalib.algorithms import cnp

    torch.manual_seed(0)
    return widgets.ContextPanel(cnp.CNP(hidden=16), max_context=10)


@pytest.mark.parametrize(
    ("name", "value"),
    [("k_shot", 9), ("amplitude", 4.5), ("phase", 2.5), ("support_range", (-5.0, 0.0))],
)
def test_context_panel_redraws_for_each_slider(context_panel, name, value):
    summary, image = context_panel.summary.value, context_panel.image.value
    assert summary.startswith("K=5 ") and image[:4] == b"\x89PNG"
    context_panel.controls[name].value = value
    assert context_panel.summary.value != summary, f"{name} did not change the summary line"
    assert context_panel.image.value != image, f"{name} did not change the plot"


def test_context_panel_adds_points_and_keeps_the_others(context_panel):
    five = context_panel.task()
    context_panel.controls["k_shot"].value = 8
    eight = context_panel.task()
    assert five.x_support.shape == (1, 5, 1) and eight.x_support.shape == (1, 8, 1)
    torch.testing.assert_close(eight.x_support[:, :5], five.x_support)
    torch.testing.assert_close(eight.x_query, five.x_query)


def test_context_panel_scores_its_task_with_the_model(context_panel):
    from metalib.algorithms import cnp

    task = context_panel.task()
    with torch.no_grad():
        mean, std = context_panel.model(task.x_support, task.y_support, task.x_query)
    scores = context_panel.scores()
    assert scores["mse"] == pytest.approx(((mean - task.y_query) ** 2).mean().item())
    assert scores["nll"] == pytest.approx(cnp.gaussian_nll(mean, std, task.y_query).item())


def test_context_panel_refuses_an_empty_range(context_panel):
    with pytest.raises(ValueError, match="is empty"):
        context_panel.controls["support_range"].value = (1.0, 1.0)


def test_show_puts_a_static_picture_of_the_panel_beneath_it(panel, monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj, raw=False: shown.append((obj, raw)))
    widgets.show(panel)
    (first, _), (picture, raw) = shown
    assert first is panel.widget and raw
    assert base64.b64decode(picture["image/png"]) == panel.image.value
    assert picture["image/png"] in picture["text/html"]
    assert "query MSE" in picture["text/plain"] and "<b>" not in picture["text/plain"]


def test_a_finished_training_monitor_leaves_a_static_curve(monkeypatch):
    shown = []
    monkeypatch.setattr(widgets, "display", lambda obj, raw=False: shown.append(obj))
    monitor = widgets.TrainingMonitor(every=100)
    with pytest.raises(ValueError, match="no step"):
        monitor.finish()
    for step, loss in enumerate([3.0, 2.0, 1.5]):
        monitor(step, loss)
    monitor.finish()  # 3 steps: no redraw happened before, finish draws them all
    (picture,) = shown
    assert base64.b64decode(picture["image/png"]) == monitor.image.value != b""
    assert "step 3: loss 1.500" in picture["text/plain"]
