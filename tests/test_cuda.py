"""What must hold on a GPU, run first on a GPU machine (``pytest -m cuda tests/test_cuda.py``).

Every test here is skipped without CUDA, and needs only the GPU machine's packages (torch,
torchvision, numpy, pillow, matplotlib, pytest): no ipywidgets, no Jupyter.
"""

import pytest
import torch

from metalib import evaluation, plotting, recipes
from metalib.data import episodes, omniglot, splits
from metalib.recipes import maml_omniglot, metric_omniglot, sinusoid

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def small(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def test_episodes_stay_on_the_gpu_and_match_the_cpus(small):
    classes = splits.class_split(small, scheme="lake", split="train")
    on_gpu = episodes.EpisodeSampler(small, classes, device="cuda")
    batch = on_gpu.sample(32, generator=torch.Generator().manual_seed(0))
    assert all(t.device.type == "cuda" for t in batch)
    on_cpu = episodes.EpisodeSampler(small, classes).sample(
        32, generator=torch.Generator().manual_seed(0)
    )
    assert all(torch.equal(g.cpu(), c) for g, c in zip(batch, on_cpu)), "the same episodes"


def test_adaptation_plot_takes_a_cpu_task_and_a_gpu_model():
    learner = recipes.load("sinusoid_maml", device="cuda")
    task = evaluation.held_out_tasks(1, k_shot=5)  # drawn on the CPU, as the panel draws it
    ax = plotting.plot_adaptation(learner.model, learner.params, task, steps=(0, 1))
    assert len(ax.lines) >= 2


def test_sinusoid_evaluation_agrees_with_the_cpus():
    on_cpu = sinusoid.mse_by_step(recipes.load("sinusoid_maml"), n_tasks=200)
    on_gpu = sinusoid.mse_by_step(recipes.load("sinusoid_maml", device="cuda"), n_tasks=200)
    torch.testing.assert_close(
        torch.tensor(on_gpu.mean), torch.tensor(on_cpu.mean), rtol=1e-3, atol=1e-4
    )


def test_a_training_state_moves_between_devices(small, tmp_path):
    config = maml_omniglot.config(
        "maml-omniglot", scheme="lake", meta_batch_size=2, k_query=3, meta_steps=4
    )
    straight = maml_omniglot.train(config, data=small, device="cpu", progress=False)
    state = tmp_path / "run.resume.pt"
    stopped = maml_omniglot.train(
        config,
        data=small,
        device="cuda",
        progress=False,
        resume_path=state,
        callback=lambda step, loss: step == 1,
    )
    assert not stopped.finished
    resumed = maml_omniglot.train(
        config, data=small, device="cpu", progress=False, resume_path=state
    )
    assert resumed.finished and resumed.history.steps == 4
    # Two of four steps on the GPU (TF32 convolutions there): the losses close, not equal.
    losses = torch.tensor(resumed.history.losses)
    torch.testing.assert_close(losses, torch.tensor(straight.history.losses), rtol=2e-2, atol=0)


def test_a_gpu_run_saves_and_loads_on_the_cpu(small, tmp_path):
    config = metric_omniglot.config(
        "protonet-omniglot", scheme="lake", train_way=5, k_query=3, meta_steps=3
    )
    run = metric_omniglot.train(config, data=small, device="cuda", progress=False)
    pt_path, _ = recipes.save(run, tmp_path / "p", metrics={}, command="test")
    assert recipes.load(pt_path).sidecar["device"].startswith("cuda")
    on_cpu = metric_omniglot.evaluate(recipes.load(pt_path), data=small, episodes=20)
    on_gpu = metric_omniglot.evaluate(run, data=small, episodes=20)
    assert abs(on_cpu["accuracy"]["mean"] - on_gpu["accuracy"]["mean"]) <= 0.02
