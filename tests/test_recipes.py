"""The recipe registry: every recipe trains, stops, resumes, saves, loads and evaluates the
same way, and the shipped checkpoints evaluate exactly as they did before the registry.

``tests/data/evaluate_shipped.json`` holds what ``python -m metalib evaluate`` printed for
every shipped checkpoint (at the options stored beside it) with the recipe modules as they
were at commit 4fa3fee, before the registry; the numbers must not move. The sinusoid entries
were recorded again when those checkpoints were retrained (30 November 2026, two inner steps
for MAML) and the two checkpoints of chapter 03's fixes were added.
"""

import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from metalib import checkpoints, cli, recipes, runtime
from metalib.data import omniglot
from metalib.recipes import RECIPES, base

RECORDED = Path(__file__).parent / "data" / "evaluate_shipped.json"
# A tiny run of each family: a few steps, on the small archives' `lake` split for Omniglot.
TINY = {
    "sinusoid": {"meta_steps": 6, "meta_batch_size": 4},
    "maml_omniglot": {"meta_steps": 6, "meta_batch_size": 2, "k_query": 3, "scheme": "lake"},
    "metric_omniglot": {"meta_steps": 6, "train_way": 5, "k_query": 3, "scheme": "lake"},
    "transfer_omniglot": {"meta_steps": 6, "batch_size": 8, "head_steps": 3, "scheme": "lake"},
    "mann_omniglot": {
        "meta_steps": 6,
        "meta_batch_size": 2,
        "n_way": 3,
        "instances": 4,
        "hidden": 16,
        "memory_slots": 8,
        "scheme": "lake",
    },
    "cnp_sinusoid": {"meta_steps": 6, "meta_batch_size": 4, "hidden": 8},
}
EVALUATE = {"tasks": 20, "episodes": 4}  # the smallest evaluation a test needs


def family_name(recipe: str) -> str:
    return RECIPES[recipe].__name__.rsplit(".", 1)[1]


@pytest.fixture
def tiny(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def train(recipe, tiny, **options):
    family = RECIPES[recipe]
    config = family.config(recipe, **TINY[family_name(recipe)])
    data = {} if family.TEST_EPISODES is None else {"data": tiny}
    return family.train(config, device="cpu", progress=False, **data, **options)


def evaluate(recipe, run, tiny):
    family = RECIPES[recipe]
    options = {k: v for k, v in EVALUATE.items() if k in family.EVALUATE_OPTIONS}
    data = {} if family.TEST_EPISODES is None else {"data": tiny}
    return family.evaluate(run, **data, **options)


def interrupt_on_call(n: int, function, *, after: bool = False):
    """``function`` that raises ``KeyboardInterrupt`` on its ``n``-th call (before running
    it, or with ``after`` once it has run), as Ctrl-C landing there would."""
    calls = [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n and not after:
            raise KeyboardInterrupt
        result = function(*args, **kwargs)
        if calls[0] == n:
            raise KeyboardInterrupt
        return result

    return wrapped


def assert_same_tensors(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_every_recipe_is_registered_once():
    assert len(RECIPES) == 17
    for name, family in RECIPES.items():
        config = family.config(name)
        assert config.recipe == name and recipes.description(name)
        assert set(family.EVALUATE_OPTIONS) <= set(cli.EVALUATE_OPTIONS)
        assert set(config.FLAGS) <= set(config.to_dict()), name


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_trains_stops_resumes_saves_loads_and_evaluates(
    recipe, tiny, tmp_path, monkeypatch
):
    family = RECIPES[recipe]
    straight = train(recipe, tiny)
    assert straight.finished and straight.history.steps == 6

    # Stopped four ways, each resumed with the same state file, then run to the end.
    state = tmp_path / "run.resume.pt"
    # 1. A callback (a deadline) stops it after step 2.
    stopped = train(recipe, tiny, resume_path=state, save_every=4, callback=lambda s, _: s == 1)
    assert stopped.history.stopped_early and not stopped.finished and state.is_file()
    # 2. Ctrl-C inside step 3, after its forward pass (batch drawn, batch norm updated).
    backward = torch.Tensor.backward
    with monkeypatch.context() as patch:
        patch.setattr(torch.Tensor, "backward", interrupt_on_call(1, backward))
        with pytest.raises(KeyboardInterrupt):
            train(recipe, tiny, resume_path=state, save_every=4)
    # 3. Ctrl-C while Adam updates the parameters of step 4: the state saved last stands.
    adam_step = torch.optim.Adam.step
    with monkeypatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", interrupt_on_call(2, adam_step, after=True))
        with pytest.raises(KeyboardInterrupt):
            train(recipe, tiny, resume_path=state, save_every=4)

    # 4. Ctrl-C after step 5, between steps.
    def interrupt(step, loss):
        if step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(recipe, tiny, resume_path=state, save_every=4, callback=interrupt)
    resumed = train(recipe, tiny, resume_path=state, save_every=4)
    assert resumed.finished and resumed.history.losses == straight.history.losses
    assert_same_tensors(resumed.params, straight.params)
    assert_same_tensors(dict(resumed.model.named_buffers()), dict(straight.model.named_buffers()))

    pt_path, _ = recipes.save(resumed, tmp_path / "model", metrics={"x": 1}, command="test")
    loaded = recipes.load(pt_path)
    assert loaded.config == resumed.config and loaded.sidecar["recipe"] == recipe
    # stopped and resumed four times on one device: one stretch, named as an unbroken run's
    assert loaded.sidecar["device"] == runtime.describe_device(torch.device("cpu"))
    assert_same_tensors(family.state_dict(loaded), family.state_dict(resumed))
    result = evaluate(recipe, loaded, tiny)
    assert result == evaluate(recipe, resumed, tiny), "the same test tasks for every run"
    json.dumps(result)  # what `evaluate` prints is JSON

    other = next(f for f in recipes.FAMILIES if f is not family)
    with pytest.raises(ValueError, match=f"holds recipe '{recipe}', not one of"):
        recipes.load(pt_path, family=other)
    blob = checkpoints.load(pt_path)
    odd = {**blob["config"], "warp_factor": 9}
    checkpoints.save(tmp_path / "odd", recipe=recipe, config=odd, state_dict=blob["state_dict"])
    with pytest.raises(ValueError, match=r"odd.pt has settings \['warp_factor'\]"):
        recipes.load(tmp_path / "odd")
    first = next(iter(blob["state_dict"]))
    wrong = {**blob["state_dict"], first: torch.zeros(1)}
    checkpoints.save(tmp_path / "wrong", recipe=recipe, config=blob["config"], state_dict=wrong)
    with pytest.raises(ValueError, match=r"(?s)wrong.pt cannot be used: .* Retrain it"):
        recipes.load(tmp_path / "wrong")
    payload = bytearray(pt_path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    pt_path.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="does not match its sidecar"):
        recipes.load(pt_path)


def test_a_resume_state_of_another_recipe_or_configuration_is_refused(tiny, tmp_path):
    state = tmp_path / "run.resume.pt"
    train("sinusoid-maml", tiny, resume_path=state, callback=lambda s, _: s == 1)
    with pytest.raises(ValueError, match="belongs to another configuration"):
        train("sinusoid-fomaml", tiny, resume_path=state)
    state.write_bytes(b"not a state")
    with pytest.raises(ValueError, match="cannot be read"):
        train("sinusoid-maml", tiny, resume_path=state)


def test_training_draws_its_batches_with_a_cpu_generator():
    """A seed must name the same batches on every device, so a CUDA generator is refused."""
    cuda_generator = SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(ValueError, match=r"use torch.Generator\(\) \(CPU\)"):
        base.fit(lambda s: torch.zeros(()), {}, object(), model=None, generator=cuda_generator)


def _switch(config, name, flag) -> bool:
    """Whether the flag is an on/off switch (``--first-order`` and ``--no-first-order``)."""
    return isinstance(getattr(config, name), bool) and flag.choices is None


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_train_help_lists_only_the_recipes_own_flags(recipe, capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", recipe, "--help"])
    shown = set(re.findall(r"(--[a-z][a-z-]*)", capsys.readouterr().out))
    family = RECIPES[recipe]
    config = family.config(recipe)
    method = getattr(config, "method", None)
    own = {
        prefix + (flag.name or name.replace("_", "-"))
        for name, flag in config.FLAGS.items()
        if flag.methods is None or method in flag.methods
        for prefix in (("--", "--no-") if _switch(config, name, flag) else ("--",))
    }
    common = {"--help", "--out", "--save-every", "--deadline", "--device", "--no-progress"}
    episodes = set() if family.TEST_EPISODES is None else {"--episodes"}
    assert shown == own | common | episodes


def test_a_killed_command_keeps_its_state_and_resumes_to_the_same_weights(tmp_path):
    """`train` stopped by SIGTERM keeps PATH.resume.pt; the same command finishes the run
    with the weights of an uninterrupted one."""
    env = {**os.environ, "PYTHONPATH": str(runtime.REPO_ROOT)}

    def command(stem):
        return [sys.executable, "-m", "metalib", "train", "sinusoid-maml", "--out", str(stem)]

    options = ["--meta-steps", "1500", "--meta-batch-size", "2", "--save-every", "20"]
    options += ["--device", "cpu", "--no-progress"]
    stem = tmp_path / "killed"
    process = subprocess.Popen([*command(stem), *options], env=env, stderr=subprocess.PIPE)
    state = tmp_path / "killed.resume.pt"
    deadline = time.monotonic() + 120
    while not state.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err.decode()
    assert state.is_file() and not (tmp_path / "killed.pt").exists()
    assert "run the same command to go on" in err.decode()
    subprocess.run([*command(stem), *options], env=env, check=True, capture_output=True)
    assert not state.exists(), "a finished run removes its state"
    subprocess.run(
        [*command(tmp_path / "whole"), *options], env=env, check=True, capture_output=True
    )
    resumed, whole = checkpoints.load(stem), checkpoints.load(tmp_path / "whole")
    assert_same_tensors(resumed["state_dict"], whole["state_dict"])
    assert resumed["sidecar"]["metrics"] == whole["sidecar"]["metrics"]


def test_shipped_checkpoints_evaluate_as_before_the_registry(real_omniglot, monkeypatch):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    recorded = json.loads(RECORDED.read_text())
    assert sorted(recorded) == checkpoints.shipped()
    for name, entry in recorded.items():
        path = str(runtime.checkpoint_dir() / f"{name}.pt")
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert cli.main(["evaluate", path, *entry["options"]]) == 0, name
        assert_same_numbers(
            json.loads(printed.getvalue()), {"checkpoint": path, **entry["output"]}, name
        )


def assert_same_numbers(got, expected, where="output"):
    """Equal structure and values, floats to 6 significant digits: the recorded outputs were
    printed with two threads, and another thread count sums in another order (the last bits
    of a float move; the LSTM meta-learner's 10-step MSE did at one thread)."""
    if isinstance(expected, float):
        assert got == pytest.approx(expected, rel=1e-6, abs=1e-9), (where, got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(expected), (where, got, expected)
        for key in expected:
            assert_same_numbers(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), (where, got, expected)
        for i, (a, b) in enumerate(zip(got, expected)):
            assert_same_numbers(a, b, f"{where}[{i}]")
    else:
        assert got == expected, (where, got, expected)


def test_same_numbers_tolerates_the_last_bits_only():
    recorded = {"mse": {"10": {"mean": 0.6012563109397888, "diverged_tasks": 0}}, "k": [5]}
    assert_same_numbers(
        {"mse": {"10": {"mean": 0.6012563, "diverged_tasks": 0}}, "k": [5]}, recorded
    )
    for changed in (
        {"mse": {"10": {"mean": 0.6013, "diverged_tasks": 0}}, "k": [5]},  # the 4th digit
        {"mse": {"10": {"mean": 0.6012563109397888, "diverged_tasks": 1}}, "k": [5]},
        {"mse": {"10": {"mean": 0.6012563109397888}}, "k": [5]},  # a key missing
        {"mse": {"10": {"mean": 0.6012563109397888, "diverged_tasks": 0}}, "k": [5, 10]},
    ):
        with pytest.raises(AssertionError):
            assert_same_numbers(changed, recorded)


@pytest.mark.parametrize("name", checkpoints.shipped())
def test_the_command_in_every_shipped_sidecar_still_makes_its_config(name):
    """The generated command line keeps every flag name: each shipped checkpoint's recorded
    command parses and asks for the configuration the checkpoint holds (settings added
    since it was made take their defaults)."""
    sidecar = checkpoints.read_sidecar(checkpoints.path_of(name))
    argv = shlex.split(sidecar["command"])
    assert argv[:3] == ["python", "-m", "metalib"]
    config = cli.config_of(cli.build_parser().parse_args(argv[3:])).to_dict()
    assert {k: config[k] for k in sidecar["config"]} == sidecar["config"]
    defaults = RECIPES[sidecar["recipe"]].config(sidecar["recipe"]).to_dict()
    assert all(config[k] == defaults[k] for k in set(config) - set(sidecar["config"]))
