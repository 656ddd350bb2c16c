import math

import pytest
import torch

from metalib.tasks import SinusoidTasks


def sample(**kw):
    args = dict(k_shot=5, k_query=20, generator=torch.Generator().manual_seed(0))
    return SinusoidTasks().sample(30, **{**args, **kw})


def test_shapes_and_support_query_properties():
    tasks = sample()
    assert tasks.x_support.shape == (30, 5, 1) and tasks.y_query.shape == (30, 20, 1)
    assert tasks.support == (tasks.x_support, tasks.y_support)
    assert tasks.query == (tasks.x_query, tasks.y_query)
    assert len(tasks) == 30 and len(tasks.task(3)) == 1


def test_values_follow_the_paper_ranges_and_formula():
    tasks = SinusoidTasks().sample(
        5000, k_shot=3, k_query=3, generator=torch.Generator().manual_seed(1)
    )
    assert 0.1 <= tasks.amplitude.min() and tasks.amplitude.max() <= 5.0
    assert 0.0 <= tasks.phase.min() and tasks.phase.max() <= math.pi
    assert -5 <= tasks.x_query.min() and tasks.x_query.max() <= 5
    assert tasks.amplitude.mean().item() == pytest.approx(2.55, abs=0.1)
    expected = tasks.amplitude[:, None, None] * torch.sin(
        tasks.x_support - tasks.phase[:, None, None]
    )
    torch.testing.assert_close(tasks.y_support, expected)


def test_same_generator_seed_gives_same_tasks_and_other_seed_differs():
    a, b = sample(), sample()
    c = sample(generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.x_support, b.x_support)
    assert not torch.allclose(a.x_support, c.x_support)


def test_support_range_restricts_only_the_support():
    tasks = sample(support_range=(-5.0, 0.0))
    assert tasks.x_support.max() <= 0.0
    assert tasks.x_query.max() > 0.0


def test_query_range_restricts_only_the_query():
    tasks = sample(query_range=(0.0, 5.0))
    assert tasks.x_query.min() >= 0.0
    assert tasks.x_support.min() < 0.0


def test_fixed_amplitude_and_phase():
    tasks = sample(amplitude=2.0, phase=1.0)
    assert torch.all(tasks.amplitude == 2.0) and torch.all(tasks.phase == 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k_shot": 0}, "k_shot=0"),
        ({"k_query": -2}, "k_query=-2"),
        ({"support_range": (1.0, -1.0)}, "support_range"),
        ({"support_range": (-9.0, 0.0)}, "inside"),
        ({"query_range": (0.0, 6.0)}, "query_range=\\(0.0, 6.0\\) must lie inside"),
    ],
)
def test_bad_sampling_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample(**kwargs)


def test_inverted_amplitude_range_is_rejected():
    with pytest.raises(ValueError, match=r"amplitude_range=\(5.0, 0.1\)"):
        SinusoidTasks(amplitude_range=(5.0, 0.1))


def test_generator_is_required():
    with pytest.raises(ValueError, match="generator"):
        SinusoidTasks().sample(2, k_shot=1, k_query=1, generator=0)


def test_a_device_generator_is_refused():
    class AppleGenerator(torch.Generator):  # stands in for torch.Generator(device="mps")
        @property
        def device(self) -> torch.device:
            return torch.device("mps")

    with pytest.raises(ValueError, match=r"on mps: draw tasks with torch.Generator\(\) \(CPU\)"):
        SinusoidTasks().sample(2, k_shot=1, k_query=1, generator=AppleGenerator())
