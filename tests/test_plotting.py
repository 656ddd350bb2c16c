import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pytest
import torch

from metalib import plotting
from metalib.evaluation import held_out_tasks
from metalib.models import SinusoidMLP, parameters_of
from metalib.training import Curve, History


def test_plot_functions_take_and_return_the_axes():
    fig, axes = plt.subplots(1, 4)
    task = held_out_tasks(3, k_shot=5)
    model = SinusoidMLP()
    assert plotting.plot_task(task, ax=axes[0], show_query=True) is axes[0]
    assert (
        plotting.plot_adaptation(model, parameters_of(model), task, ax=axes[1], steps=(0, 1, 5))
        is axes[1]
    )
    assert len(axes[1].get_lines()) == 1 + 3  # truth + one line per step count
    curve = Curve(mean=(3.0, 1.0, 0.5), ci95=(0.1, 0.1, 0.1), n_tasks=10)
    assert (
        plotting.plot_curves({"MAML": curve}, ax=axes[2], reference={"paper": {1: 0.7}}) is axes[2]
    )
    history = History(losses=torch.linspace(3, 1, 300).tolist())
    assert plotting.plot_history(history, ax=axes[3]) is axes[3]
    plt.close(fig)


def test_plot_without_axes_makes_a_figure():
    ax = plotting.plot_task(held_out_tasks(2))
    assert ax.figure is not None
    plt.close(ax.figure)


def test_plot_images_draws_a_grid_with_labels():
    images = torch.zeros(6, 1, 28, 28)
    images[:, :, 10:18, 10:18] = 1  # ink in the middle of each image
    fig, ax = plt.subplots()
    assert plotting.plot_images(images, nrow=3, ax=ax, labels=list("abcdef")) is ax
    grid = ax.images[0].get_array()
    assert grid.shape == (2 * 30 + 2, 3 * 30 + 2)  # make_grid pads 2 pixels around each image
    assert grid[2 + 14, 2 + 14] == 1 and grid[2, 2] == 0
    assert [t.get_text() for t in ax.texts] == list("abcdef")
    plt.close(fig)


def test_plot_images_wants_one_label_per_image():
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        plotting.plot_images(torch.zeros(3, 28, 28, dtype=torch.uint8), labels=["a", "b"])


def test_plot_episode_shows_support_and_some_queries():
    y_support = torch.arange(3).repeat_interleave(2)
    y_query = torch.arange(3).repeat_interleave(8)
    axes = plotting.plot_episode(
        torch.rand(6, 1, 28, 28), y_support, torch.rand(24, 1, 28, 28), y_query
    )
    assert [t.get_text() for t in axes[0].texts] == ["0", "0", "1", "1", "2", "2"]
    assert len(axes[1].texts) == 3 * 5 and axes[1].get_title() == "query: 5 of 8 per class"
    plt.close(axes[0].figure)


def test_plot_predictions_colours_right_and_wrong():
    predicted, truth = torch.tensor([0, 1, 2, 2]), torch.tensor([0, 1, 1, 2])
    ax = plotting.plot_predictions(torch.rand(4, 1, 28, 28), truth, predicted, nrow=2)
    colours = [t.get_color() for t in ax.texts]
    assert colours == [
        plotting.RIGHT_COLOR,
        plotting.RIGHT_COLOR,
        plotting.WRONG_COLOR,
        plotting.RIGHT_COLOR,
    ]
    plt.close(ax.figure)


def test_pca_2d_keeps_the_two_main_directions():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(200, 3, generator=gen) * torch.tensor([10.0, 3.0, 0.1])
    flat = plotting.pca_2d(points)
    assert flat.shape == (200, 2)
    spread = flat.var(0)
    assert 60 < spread[0] < 140 and 5 < spread[1] < 14  # variances about 100 and 9


def test_plot_embedding_draws_queries_and_prototypes():
    gen = torch.Generator().manual_seed(0)
    query, labels = torch.randn(15, 64, generator=gen), torch.arange(5).repeat_interleave(3)
    protos = torch.randn(5, 64, generator=gen)
    ax = plotting.plot_embedding(query, labels, protos, title="episode")
    assert (
        len(ax.collections) == 10 and ax.get_title() == "episode"
    )  # a dot set and a star per class
    assert sum(len(c.get_offsets()) for c in ax.collections) == 15 + 5
    plt.close(ax.figure)


def test_plot_architecture_draws_one_box_per_stage_and_its_inputs():
    ax = plotting.plot_architecture(["a", "b", "c"], inputs={2: "query x"}, title="net")
    labels = [t.get_text() for t in ax.texts if t.get_text()]
    arrows = [t for t in ax.texts if not t.get_text()]  # annotations with an arrow only
    assert labels == ["a", "b", "c", "query x"]
    assert len(arrows) == 2 + 1  # between the three boxes, and into the third
    assert ax.get_title() == "net"
    plt.close(ax.figure)


@pytest.mark.parametrize(
    ("stages", "inputs", "message"),
    [([], None, "stages is empty"), (["a"], {3: "x"}, "must index stages 0..0")],
)
def test_plot_architecture_refuses_bad_input(stages, inputs, message):
    with pytest.raises(ValueError, match=message):
        plotting.plot_architecture(stages, inputs=inputs)
    plt.close("all")


def test_plot_cnp_prediction_draws_a_band_of_two_sigma():
    from metalib.algorithms import cnp

    torch.manual_seed(0)
    model = cnp.CNP(hidden=8)
    task = held_out_tasks(2, k_shot=3)
    ax = plotting.plot_cnp_prediction(model, task, index=1)
    truth, mean = ax.get_lines()[0], ax.get_lines()[-1]
    x_plot = torch.tensor(mean.get_xdata(), dtype=torch.float32).view(1, -1, 1)
    with torch.no_grad():
        expected_mean, std = model(task.x_support[1:], task.y_support[1:], x_plot)
    torch.testing.assert_close(torch.as_tensor(mean.get_ydata()).float(), expected_mean.flatten())
    band = ax.collections[-1].get_paths()[0].vertices[:, 1]  # the fill's outline
    width = float(band.max() - band.min())
    assert width >= 4 * float(std.min()) and len(truth.get_xdata()) == 200
    plt.close(ax.figure)


def test_plot_instance_accuracy_draws_each_result_reference_and_chance():
    from metalib.recipes.mann_omniglot import InstanceAccuracy

    result = InstanceAccuracy(mean=(0.3, 0.8, 0.9), ci95=(0.02, 0.02, 0.01), episodes=50)
    ax = plotting.plot_instance_accuracy(
        {"ours": result}, reference={"paper": {1: 0.36, 2: 0.83}}, chance=0.2
    )
    lines = ax.get_lines()
    assert list(lines[0].get_ydata()) == [0.3, 0.8, 0.9] and list(lines[0].get_xdata()) == [1, 2, 3]
    assert list(lines[1].get_ydata()) == [0.36, 0.83]
    assert lines[2].get_ydata()[0] == 0.2
    plt.close(ax.figure)


def test_a_learned_rule_adapts_in_the_plot_and_its_gates_are_drawn():
    from metalib.algorithms import lstm_meta

    fig, axes = plt.subplots(1, 3)
    task = held_out_tasks(2, k_shot=5)
    torch.manual_seed(0)
    model = SinusoidMLP()
    params = parameters_of(model)
    rule = lstm_meta.init_rule(4, generator=torch.Generator().manual_seed(0))
    plotting.plot_adaptation(model, params, task, ax=axes[0], steps=(0, 3), rule=rule)
    path = lstm_meta.adapt(
        model, params, rule, task.x_support[0], task.y_support[0], inner_steps=3, trajectory=True
    )
    from torch.func import functional_call

    grid = torch.linspace(-5, 5, 200).unsqueeze(-1)
    expected = functional_call(model, path[3], (grid,)).detach().squeeze(-1)
    drawn = torch.as_tensor(axes[0].get_lines()[-1].get_ydata())
    torch.testing.assert_close(drawn, expected)  # the rule's third step, not gradient descent's
    gates = lstm_meta.gates_by_tensor(model, params, rule, task, inner_steps=3)
    assert plotting.plot_gates(gates.step_size, ax=axes[1], mark_step=2) is axes[1]
    lines = axes[1].get_lines()
    assert len(lines) == len(params) + 1 and axes[1].get_yscale() == "log"
    assert [line.get_linestyle() for line in lines[:2]] == ["-", ":"]  # weight, bias
    plt.close(fig)
