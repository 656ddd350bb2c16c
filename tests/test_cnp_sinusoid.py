"""The model-based recipes: CNP training, evaluation on MAML's test tasks, checkpoints."""

import pytest
import torch

from metalib import checkpoints, evaluation, recipes
from metalib.recipes import cnp_sinusoid
from metalib.recipes.cnp_sinusoid import CNPConfig


def test_training_beats_predicting_zero():
    config = CNPConfig(meta_steps=400, meta_batch_size=32, outer_lr=3e-3)
    trained = cnp_sinusoid.train(config, device="cpu", progress=False)
    tasks = evaluation.held_out_tasks(200, k_shot=5)
    zero = float((tasks.y_query**2).mean())  # about 4.8: the sinusoids' mean square
    before = cnp_sinusoid.score_of(config.model(), n_tasks=200)
    after = cnp_sinusoid.score_of(trained.model, n_tasks=200)
    # Three seeds gave 1.11-1.21 after 400 steps; the untrained network is near 4.8.
    assert before.mse > 0.8 * zero and after.mse < 2.0, (zero, before, after)
    assert after.nll < before.nll and 0 < after.mse_ci95 < 0.5 and after.tasks == 200
    assert len(trained.history.losses) == 400 and not trained.model.training
    one, ten = (cnp_sinusoid.score_of(trained.model, k_shot=k, n_tasks=200).mse for k in (1, 10))
    assert ten < one, (one, ten)  # more support points help


def test_evaluation_uses_mamls_held_out_tasks():
    torch.manual_seed(0)
    model = CNPConfig(hidden=8).model()
    tasks = evaluation.held_out_tasks(50, k_shot=3)
    mse, nll = cnp_sinusoid.per_task_errors(model, tasks)
    with torch.no_grad():
        mean, _ = model(tasks.x_support, tasks.y_support, tasks.x_query)
    torch.testing.assert_close(mse, ((mean - tasks.y_query) ** 2).mean(dim=(1, 2)))
    score = cnp_sinusoid.score_of(model, k_shot=3, n_tasks=50)
    assert score.mse == pytest.approx(float(mse.mean()), rel=1e-6) and nll.shape == (50,)


def test_checkpoint_round_trip(tmp_path):
    config = CNPConfig(meta_steps=3, meta_batch_size=4, hidden=8)
    trained = cnp_sinusoid.train(config, device="cpu", progress=False)
    recipes.save(trained, tmp_path / "cnp", metrics={"steps": 3}, command="test")
    loaded = recipes.load(tmp_path / "cnp.pt", family=cnp_sinusoid)
    loaded_config, model = loaded.config, loaded.model
    assert loaded_config == config and not model.training
    for name, value in trained.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)


def test_load_refuses_other_recipes(tmp_path):
    checkpoints.save(tmp_path / "other", recipe="sinusoid-maml", config={}, state_dict={})
    with pytest.raises(ValueError, match="cnp-sinusoid"):
        recipes.load(tmp_path / "other", family=cnp_sinusoid)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"k_min": 5, "k_max": 2}, "k_min=5 exceeds k_max=2"),
        ({"k_min": 0}, "k_min"),
        ({"meta_batch_size": 0}, "meta_batch_size"),
        ({"outer_lr": -1.0}, "outer_lr"),
        ({"outer_lr_schedule": "cyclic"}, "outer_lr_schedule='cyclic'"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        CNPConfig(**overrides)
