import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import torch

from metalib import plotting
from metalib.models import SinusoidMLP, parameters_of
from metalib.recipes import held_out_tasks
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
