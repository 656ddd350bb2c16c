"""Model selection in training (``recipes.base.Validation``): the best-scoring step's tensors
are kept, the same ones after any stop and resume, and the sidecar says which step it was."""

import json
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


def toy_run(config=Toy(), *, every=2, score_calls=None, **loop):
    """Regress y = 3x with a batch-normed linear map; the score peaks when w has risen 0.3."""
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
        return -abs(float(model[1].weight.detach()) - peak)

    validation = None if every is None else base.Validation(every, score)
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

    def interrupting(every, score, name="val_accuracy"):
        def wrapped():
            calls.append(1)
            if len(calls) == stop_at_call:
                raise KeyboardInterrupt
            return score()

        return original(every, wrapped, name)

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
            lambda every, score, name="val_accuracy": original(every, score, name, patience),
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
