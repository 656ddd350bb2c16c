"""Model selection in training (``recipes.base.Validation``): the best-scoring step's tensors
are kept, the same ones after any stop and resume, and the sidecar says which step it was."""

import json
import math
from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from metalib.recipes import base


@dataclass(frozen=True)
class Toy(base.Config):
    meta_steps: int = 12
    outer_lr: float = 0.05
    outer_lr_schedule: str = "constant"

    @property
    def recipe(self) -> str:
        return "toy"


def toy_run(config=Toy(), *, every=2, score_calls=None, lower=False, **loop):
    """Regress y = 3x with a batch-normed linear map; the score peaks when w has risen 0.3.
    With ``lower``, the score is the distance from that peak and lower is better."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm1d(1), nn.Linear(1, 1))
    peak = float(model[1].weight.detach()) + 0.3
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(0)

    def step_loss(step):
        x = torch.randn(16, 1, generator=generator)
        return ((model(x) - 3 * x) ** 2).mean()

    def score():
        if score_calls is not None:
            score_calls.append(1)
        distance = abs(float(model[1].weight.detach()) - peak)
        return distance if lower else -distance

    validation = None
    if every is not None:
        validation = base.Validation(every, score, lower_is_better=lower)
    history = base.fit(
        step_loss,
        params,
        config,
        model=model,
        generator=generator,
        progress=False,
        validation=validation,
        **loop,
    )
    return model, history


def same_tensors(a: nn.Module, b: nn.Module) -> bool:
    left, right = a.state_dict(), b.state_dict()
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def test_training_ends_with_the_best_validated_step():
    model, history = toy_run()
    steps = [s for s, _ in history.validation]
    assert steps == [2, 4, 6, 8, 10, 12], "every 2 steps and the last"
    best_step, best_score = max(history.validation, key=lambda pair: pair[1])
    assert history.selected == {"step": best_step, "val_accuracy": best_score}
    assert 2 < best_step < 12, "the toy's score peaks inside the run"
    # The same training stopped at that step has exactly the tensors that were kept.
    shorter, _ = toy_run(replace(Toy(), meta_steps=best_step), every=None)
    assert same_tensors(model, shorter)
    assert history.steps == 12, "all steps ran; only the tensors come from the kept one"


def test_an_error_is_selected_by_its_lowest_value():
    """A validation error (``lower_is_better``) keeps the step a score would: the lowest."""
    model, history = toy_run(lower=True)
    _, by_score = toy_run()
    best_step, lowest = min(history.validation, key=lambda pair: pair[1])
    assert history.selected == {"step": best_step, "val_accuracy": lowest}
    assert best_step == by_score.selected["step"] and 2 < best_step < 12
    shorter, _ = toy_run(replace(Toy(), meta_steps=best_step), every=None)
    assert same_tensors(model, shorter)


def test_a_diverged_validation_score_is_never_kept_and_is_written_as_null(tmp_path):
    calls = []

    def diverging_first(every, score, **options):
        def wrapped():
            calls.append(1)
            return math.inf if len(calls) == 1 else score()

        return original(every, wrapped, **options)

    original = base.Validation
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base, "Validation", diverging_first)
        model, history = toy_run(lower=True)
    assert history.validation[0] == [2, math.inf] and history.selected["step"] > 2
    run = base.Run(Toy(), model, dict(model.named_parameters()), history, torch.device("cpu"))
    _, json_path = base.save(run, tmp_path / "toy", state_dict=model.state_dict())

    def refuse(constant):
        raise AssertionError(f"the sidecar holds {constant}, which is not JSON")

    selection = json.loads(json_path.read_text(), parse_constant=refuse)["metrics"]["selection"]
    assert selection["scores"][0] == [2, None] and selection["kept"] == history.selected


def test_without_validation_the_last_step_is_kept():
    _, history = toy_run(every=None)
    assert history.validation == [] and history.selected is None


@pytest.mark.parametrize("stop_at_call", [2, 3])
def test_a_stop_while_validating_resumes_to_the_same_choice(tmp_path, stop_at_call):
    straight, history = toy_run()
    state = tmp_path / "toy.resume.pt"
    calls = []

    def deadline(step, loss):  # stops after step 5
        return step == 4

    _, stopped = toy_run(resume_path=state, save_every=3, callback=deadline)
    assert stopped.stopped_early and [s for s, _ in stopped.validation] == [2, 4]

    # Ctrl-C inside the score of a later check: that check is redone on resume.
    original = base.Validation

    def interrupting(every, score, **options):
        def wrapped():
            calls.append(1)
            if len(calls) == stop_at_call:
                raise KeyboardInterrupt
            return score()

        return original(every, wrapped, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(base, "Validation", interrupting)
        with pytest.raises(KeyboardInterrupt):
            toy_run(resume_path=state, save_every=3)
    resumed, again = toy_run(resume_path=state, save_every=3)
    assert again.validation == history.validation and again.selected == history.selected
    assert same_tensors(resumed, straight)


def test_the_sidecar_names_the_kept_step(tmp_path):
    model, history = toy_run()
    run = base.Run(Toy(), model, dict(model.named_parameters()), history, torch.device("cpu"))
    _, json_path = base.save(run, tmp_path / "toy", state_dict=model.state_dict(), metrics={"a": 1})
    sidecar = json.loads(json_path.read_text())
    assert sidecar["metrics"]["a"] == 1
    assert sidecar["metrics"]["selection"]["kept"] == history.selected
    assert sidecar["metrics"]["selection"]["scores"] == history.validation
    assert sidecar["metrics"]["selection"]["converged"] is False


def test_quick_mode_caps_the_validation_episodes(monkeypatch):
    from metalib import evaluation, runtime

    monkeypatch.setattr(runtime, "quick", lambda: True)
    assert evaluation.validation_episodes(200) == 20 and evaluation.validation_episodes(4) == 4
    monkeypatch.setattr(runtime, "quick", lambda: False)
    assert evaluation.validation_episodes(200) == 200


def patient_run(patience, **loop):
    """The toy with early stopping: its score peaks inside the run, then falls."""
    torch.manual_seed(0)
    calls = []
    original = base.Validation
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            base,
            "Validation",
            lambda every, score, **options: original(every, score, patience=patience, **options),
        )
        return toy_run(replace(Toy(), meta_steps=40), score_calls=calls, **loop)


def test_patience_stops_once_the_score_has_stopped_improving(tmp_path):
    full, everything = patient_run(0)
    best_step = everything.selected["step"]
    model, history = patient_run(2)
    assert history.converged and not history.stopped_early
    # Two checks after the best one, then stop: the kept tensors are those of the full run.
    assert history.steps == best_step + 2 * 2 < 40
    assert history.validation == everything.validation[: len(history.validation)]
    assert history.selected == everything.selected
    assert same_tensors(model, full)
    run = base.Run(Toy(), model, dict(model.named_parameters()), history, torch.device("cpu"))
    assert run.finished, "a converged run is complete, not interrupted"
    _, json_path = base.save(run, tmp_path / "toy", state_dict=model.state_dict())
    assert json.loads(json_path.read_text())["metrics"]["selection"]["converged"] is True


def test_a_run_that_never_stalls_trains_all_steps():
    _, history = patient_run(100)
    assert not history.converged and history.steps == 40


def test_a_patient_run_resumes_to_the_same_stop(tmp_path):
    straight, history = patient_run(2)
    state = tmp_path / "toy.resume.pt"

    def deadline(step, loss):  # stops after step 3, before the peak
        return step == 2

    _, stopped = patient_run(2, resume_path=state, save_every=1, callback=deadline)
    assert stopped.stopped_early and not stopped.converged
    resumed, again = patient_run(2, resume_path=state, save_every=1)
    assert again.converged and again.steps == history.steps
    assert again.validation == history.validation and same_tensors(resumed, straight)
    # A state saved after patience ran out trains no further step when resumed.
    done, once_more = patient_run(2, resume_path=state, save_every=1)
    assert once_more.converged and once_more.steps == history.steps
    assert same_tensors(done, straight)


def test_the_pretrained_sinusoid_baseline_keeps_its_best_validated_step():
    """``sinusoid-pretrain`` selects on validation tasks (never the test tasks' seed): its
    MSE after fine-tuning is not what it trains, and drifts (docs/retraining.md)."""
    from metalib import evaluation
    from metalib.recipes import sinusoid

    assert sinusoid.config("sinusoid-pretrain").validate_every > 0
    assert sinusoid.config("sinusoid-maml").validate_every == 0
    assert evaluation.VALIDATION_SEED != evaluation.TEST_SEED
    config = sinusoid.config("sinusoid-pretrain", meta_steps=60, meta_batch_size=20)
    run = sinusoid.train(replace(config, validate_every=20), device="cpu", progress=False)
    assert [step for step, _ in run.history.validation] == [20, 40, 60]
    step, lowest = min(run.history.validation, key=lambda pair: pair[1])
    assert run.history.selected == {"step": step, "val_mse_k5_5_steps": lowest}
    again = sinusoid.mse_by_step(run, n_tasks=1000, max_steps=5, seed=evaluation.VALIDATION_SEED)
    assert again.mean[5] == pytest.approx(lowest, rel=1e-6), "the kept step's own tensors"
    assert sinusoid.validation_mse(sinusoid.learner_of(run)) == pytest.approx(lowest, rel=1e-6)
