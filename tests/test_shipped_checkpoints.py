"""The shipped checkpoints meet the course's quality bar, measured by the command line.

Targets (K = 5, 1,000 held-out tasks, inner step 0.01): MAML test MSE ≤ 0.38 after 5
steps and ≤ 0.35 after 10 (Finn et al. 2017 report 0.38 / 0.35); the pretrained baseline
within 0.25 of the paper's 2.23 / 2.19 after 5 / 10 steps, and ≥ 2.0 after 10; every
meta-learner of chapter 03 beats the baseline after one step and halves its error at its
best step count; Meta-SGD beats MAML after one step; the learned update rule of chapter 04
is under a third of the baseline after 5 and 10 steps.
"""

import contextlib
import io
import json

import pytest
import torch

from metalib import checkpoints, cli, compare, evaluation, recipes, runtime
from metalib.recipes import metric_omniglot

SHIPPED = runtime.checkpoint_dir()
NAMES = [
    "sinusoid_maml",
    "sinusoid_fomaml",
    "sinusoid_reptile",
    "sinusoid_meta_sgd",
    "sinusoid_anil",
    "sinusoid_lstm_meta",
    "sinusoid_pretrain",
    "sinusoid_meta_sgd_5_steps",
    "sinusoid_anil_k5",
]


@pytest.fixture(scope="module")
def results():
    out = {}
    for name in NAMES:
        argv = [
            "evaluate",
            str(SHIPPED / f"{name}.pt"),
            "--k-shot",
            "5",
            "--tasks",
            "1000",
            "--device",
            "cpu",
        ]
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert cli.main(argv) == 0
        out[name] = json.loads(buffer.getvalue())["mse"]
    return out


def test_shipped_maml_reaches_the_paper(results):
    mse = results["sinusoid_maml"]
    assert mse["5"]["mean"] <= 0.38 and mse["10"]["mean"] <= 0.35, mse


def test_shipped_pretrained_baseline_cannot_adapt(results):
    mse = results["sinusoid_pretrain"]
    assert mse["10"]["mean"] >= 2.0, mse


def test_shipped_pretrained_baseline_is_the_papers_and_was_chosen_on_validation(results):
    """The targets of benchmarks/sinusoid_seeds.py; the kept step is the lowest validation
    MSE of those checked, every ``validate_every`` steps and at the last."""
    mse = results["sinusoid_pretrain"]
    for steps, (low, high) in compare.sinusoid_seeds()["targets"]["pretrain"].items():
        assert low <= mse[steps]["mean"] <= high, (steps, mse)
    sidecar = checkpoints.read_sidecar(SHIPPED / "sinusoid_pretrain")
    selection = sidecar["metrics"]["selection"]
    scores = {int(step): score for step, score in selection["scores"]}
    kept = selection["kept"]
    assert scores[kept["step"]] == kept["val_mse_k5_5_steps"] == min(scores.values())
    every, steps = sidecar["config"]["validate_every"], sidecar["config"]["meta_steps"]
    assert sorted(scores) == [*range(every, steps + 1, every)], "every check, none skipped"


@pytest.mark.parametrize("name", NAMES[1:5])
def test_every_meta_learner_beats_the_baseline(results, name):
    """Better after one step, and at its best number of steps (among 1, 5, 10, where no
    task diverged) less than half the baseline's best error."""
    mse, baseline = results[name], results["sinusoid_pretrain"]
    assert mse["1"]["diverged_tasks"] == 0 and mse["1"]["mean"] < baseline["1"]["mean"]
    best = min(v["mean"] for k, v in mse.items() if k != "0" and v["diverged_tasks"] == 0)
    assert best < 0.5 * min(v["mean"] for v in baseline.values()), mse


def test_the_learned_update_rule_beats_the_baseline_by_far_at_its_trained_steps(results):
    """The LSTM meta-learner is trained for 5 steps and only the fifth is scored in
    training, so it is held to that step (and to 10, past it): no task diverges, and its
    error is under a third of the pretrained baseline's best."""
    mse, baseline = results["sinusoid_lstm_meta"], results["sinusoid_pretrain"]
    assert mse["5"]["diverged_tasks"] == mse["10"]["diverged_tasks"] == 0, mse
    best_baseline = min(v["mean"] for v in baseline.values())
    assert mse["5"]["mean"] < best_baseline / 3 and mse["10"]["mean"] < best_baseline / 3, mse


def test_meta_sgd_beats_maml_after_one_step(results):
    assert results["sinusoid_meta_sgd"]["1"]["mean"] < results["sinusoid_maml"]["1"]["mean"]


def test_the_fixes_of_chapter_03_stop_the_repeated_steps_from_overshooting(results):
    """Meta-SGD trained for 5 steps in [0, 0.05] and ANIL trained with K = 5: no task
    diverges, the error keeps falling to step 10, and each beats its one-step/K = 10 form
    after 10 steps (where Meta-SGD diverged and ANIL's interval was wide)."""
    for fixed, shipped in (
        ("sinusoid_meta_sgd_5_steps", "sinusoid_meta_sgd"),
        ("sinusoid_anil_k5", "sinusoid_anil"),
    ):
        mse = results[fixed]
        assert all(v["diverged_tasks"] == 0 for v in mse.values()), fixed
        assert mse["10"]["mean"] < mse["5"]["mean"] < mse["1"]["mean"], fixed
        before = results[shipped]["10"]
        assert before["diverged_tasks"] > 0 or before["mean"] > mse["10"]["mean"], fixed
    assert results["sinusoid_meta_sgd_5_steps"]["5"]["mean"] < results["sinusoid_maml"]["5"]["mean"]


@pytest.mark.parametrize("name", NAMES)
def test_sidecars_record_how_they_were_made(name):
    blob = checkpoints.load(SHIPPED / name)
    sidecar = blob["sidecar"]
    assert sidecar["command"].startswith(f"python -m metalib train {blob['recipe']} --out ")
    assert sidecar["wall_time_s"] > 0 and sidecar["device"]
    assert sidecar["config"]["meta_steps"] == sidecar["metrics"]["steps"]
    assert (SHIPPED / f"{name}.pt").stat().st_size < 1_000_000


@pytest.mark.parametrize(("name", "first_order"), [("maml", False), ("fomaml", True)])
def test_shipped_omniglot_checkpoint_matches_its_sidecar(
    name, first_order, real_omniglot, monkeypatch
):
    """The CPU-budget (FO)MAML 5-way 1-shot checkpoints (400 of the paper's 60,000 steps)."""
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = SHIPPED / f"{name}_omniglot_5w1s_cpu_demo"
    sidecar = checkpoints.read_sidecar(stem)
    assert sidecar["config"]["meta_steps"] == sidecar["metrics"]["steps"] == 400
    assert sidecar["config"]["first_order"] is first_order
    assert sidecar["metrics"]["test_episodes"] == 600
    assert sidecar["metrics"]["test_accuracy_by_step"]["3"]["mean"] >= MIN_ACCURACY[name]
    assert (stem.with_suffix(".pt")).stat().st_size < 1_000_000
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["evaluate", str(stem) + ".pt", "--episodes", "40", "--device", "cpu"])
    assert code == 0
    result = json.loads(out.getvalue())
    # 40 episodes: about a ±2% interval around the sidecar's accuracy.
    recorded = sidecar["metrics"]["test_accuracy_by_step"]["3"]["mean"]
    assert abs(result["accuracy"]["mean"] - recorded) < 0.05
    assert result["accuracy_by_step"]["0"]["mean"] < 0.3


MIN_ACCURACY = {"maml": 0.9, "fomaml": 0.85}


def ran_its_course(sidecar: dict) -> bool:
    """All its steps, or fewer because its validation score had stopped improving."""
    steps, planned = sidecar["metrics"]["steps"], sidecar["config"]["meta_steps"]
    converged = sidecar["metrics"].get("selection", {}).get("converged", False)
    return steps == planned or (converged and steps < planned)


# The metric-based checkpoints of chapter 07: (name, k_shot, the sidecar's settings).
METRIC = [
    ("protonet_omniglot_1shot", 1),
    ("protonet_omniglot_5shot", 5),
    ("protonet_omniglot_lake_1shot", 1),
    ("matching_omniglot_1shot", 1),
    ("siamese_omniglot_1shot", 1),
]


@pytest.mark.parametrize(("name", "k_shot"), METRIC)
def test_shipped_metric_checkpoints_match_their_sidecars(name, k_shot, real_omniglot, monkeypatch):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = SHIPPED / name
    blob = checkpoints.load(stem)
    sidecar = blob["sidecar"]
    assert sidecar["command"].startswith(f"python -m metalib train {blob['recipe']} ")
    assert ran_its_course(sidecar)
    assert sidecar["config"]["k_shot"] == k_shot and sidecar["wall_time_s"] > 0
    assert (stem.with_suffix(".pt")).stat().st_size < 1_000_000
    recorded = sidecar["metrics"]["test_accuracy"][f"5-way {k_shot}-shot"]
    assert recorded["episodes"] == 1000
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["evaluate", str(stem) + ".pt", "--n-way", "5", "--episodes", "100"]
        assert cli.main([*argv, "--device", "cpu"]) == 0
    result = json.loads(out.getvalue())
    assert (result["n_way"], result["k_shot"], result["episodes"]) == (5, k_shot, 100)
    # 100 of the sidecar's 1,000 episodes' kind: within 3 of its own 95% half-widths.
    assert abs(result["accuracy"]["mean"] - recorded["mean"]) <= 3 * result["accuracy"]["ci95"]


# What each retrained checkpoint scored before its retraining (its sidecar then, 1,000 test
# episodes): a retrained checkpoint replaces a shipped one only if it is at least as good.
BEFORE_RETRAINING = {
    "protonet_omniglot_5shot": {"5-way 5-shot": 0.9961, "20-way 5-shot": 0.9878},  # a622f2a
    "matching_omniglot_1shot": {"5-way 1-shot": 0.9638, "20-way 1-shot": 0.8943},  # 27ef48e~1
    "siamese_omniglot_1shot": {"5-way 1-shot": 0.9284, "20-way 1-shot": 0.7948},
    "protonet_omniglot_1shot": {"5-way 1-shot": 0.9841, "20-way 1-shot": 0.9473},  # 6f2dc04
    "protonet_omniglot_lake_1shot": {"5-way 1-shot": 0.9769, "20-way 1-shot": 0.9374},  # f6a707a
    "transfer_omniglot": {
        "5-way 1-shot": 0.9117,
        "5-way 5-shot": 0.9775,
        "20-way 1-shot": 0.7752,
        "20-way 5-shot": 0.9281,
    },  # f6a707a
}


@pytest.mark.parametrize("name", sorted(BEFORE_RETRAINING))
def test_a_retrained_checkpoint_is_at_least_as_good_as_the_one_it_replaced(name):
    recorded = checkpoints.read_sidecar(SHIPPED / name)["metrics"]["test_accuracy"]
    for setting, before in BEFORE_RETRAINING[name].items():
        assert recorded[setting]["episodes"] == 1000
        assert recorded[setting]["mean"] >= before - 5e-5, (setting, recorded[setting], before)


@pytest.mark.parametrize("name", [name for name, _ in METRIC] + ["transfer_omniglot"])
def test_omniglot_checkpoints_record_the_step_chosen_on_validation(name):
    sidecar = checkpoints.read_sidecar(SHIPPED / name)
    selection = sidecar["metrics"].get("selection")
    if sidecar["config"]["scheme"] == "lake":  # no validation classes: the last step is kept
        assert selection is None
        return
    assert selection is not None, f"{name} was not chosen on the validation classes"
    scores = dict((int(step), score) for step, score in selection["scores"])
    kept = selection["kept"]
    assert scores[kept["step"]] == kept["val_accuracy"] == max(scores.values())
    assert 0.2 < kept["val_accuracy"] <= 1.0
    every = sidecar["config"]["validate_every"]
    assert all(step % every == 0 or step == sidecar["metrics"]["steps"] for step in scores)


def test_the_5_shot_protonet_is_as_good_at_5_shot_as_the_1_shot_one(real_omniglot):
    """Issue 20: on the same 300 test episodes at 20-way 5-shot (the first of the sidecars'
    1,000), the network trained 5-shot is not below the network trained 1-shot and tested
    5-shot: the 95% interval of their difference, episode by episode, reaches zero or lies
    above it. Pairing cancels what makes an episode hard for both, so this interval is narrower
    than either network's. On all 1,000 the shipped network is ahead by 0.05 ± 0.04 points, and
    an earlier 5-shot network (5,000 episodes) fails the check (-0.15 ± 0.04 points; both in
    data/results/protonet_5shot_seeds.json)."""
    sampler = evaluation.evaluation_sampler(real_omniglot, n_way=20, k_shot=5)
    accuracy = {}
    for name in ("protonet_omniglot_5shot", "protonet_omniglot_1shot"):
        run = recipes.load(SHIPPED / name, family=metric_omniglot)
        accuracy[name] = metric_omniglot.per_episode_accuracy(
            run.model, run.config, sampler, n_episodes=300
        )
    five, one = accuracy["protonet_omniglot_5shot"], accuracy["protonet_omniglot_1shot"]
    gap = evaluation.score(five - one)
    assert gap.mean + gap.ci95 >= 0, gap


def test_shipped_cnp_matches_its_sidecar_and_beats_maml(results):
    stem = SHIPPED / "cnp_sinusoid"
    sidecar = checkpoints.load(stem)["sidecar"]
    assert sidecar["command"].startswith("python -m metalib train cnp-sinusoid ")
    assert sidecar["config"]["meta_steps"] == sidecar["metrics"]["steps"]
    assert stem.with_suffix(".pt").stat().st_size < 1_000_000
    for k in (5, 10):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli.main(["evaluate", f"{stem}.pt", "--k-shot", str(k), "--device", "cpu"]) == 0
        result = json.loads(out.getvalue())
        recorded = sidecar["metrics"][f"test_k{k}_1000_tasks"]
        # The same 1,000 held-out tasks: the same number, up to float reduction order.
        assert result["mse"]["mean"] == pytest.approx(recorded["mse"], rel=1e-4)
    # MAML's 1,000 tasks at K = 5: the CNP without a gradient step below MAML after 10.
    k5 = sidecar["metrics"]["test_k5_1000_tasks"]["mse"]
    assert k5 < results["sinusoid_maml"]["10"]["mean"], (k5, results["sinusoid_maml"])


def test_shipped_transfer_baseline_matches_its_sidecar(real_omniglot, monkeypatch):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = SHIPPED / "transfer_omniglot"
    sidecar = checkpoints.load(stem)["sidecar"]
    assert sidecar["command"].startswith("python -m metalib train transfer-omniglot ")
    assert ran_its_course(sidecar)
    assert stem.with_suffix(".pt").stat().st_size < 1_000_000
    recorded = sidecar["metrics"]["test_accuracy"]["5-way 1-shot"]
    assert recorded["episodes"] == 1000
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["evaluate", f"{stem}.pt", "--episodes", "100", "--device", "cpu"]
        assert cli.main(argv) == 0
    result = json.loads(out.getvalue())
    assert (result["n_way"], result["k_shot"], result["fine_tune"]) == (5, 1, "head")
    assert abs(result["accuracy"]["mean"] - recorded["mean"]) <= 3 * result["accuracy"]["ci95"]


def counting_accuracy(n_way, instances, sequences=2000):
    """By sight of a class: how often the label with the most appearances left is right
    (ties split), over random sequences; the best a learner blind to the drawings can do."""
    generator = torch.Generator().manual_seed(0)
    right = torch.zeros(instances)
    for _ in range(sequences):
        labels = torch.arange(n_way).repeat(instances)
        left, seen = [instances] * n_way, [0] * n_way
        for label in labels[torch.randperm(len(labels), generator=generator)].tolist():
            likeliest = [c for c in range(n_way) if left[c] == max(left)]
            right[seen[label]] += (label in likeliest) / len(likeliest)
            seen[label], left[label] = seen[label] + 1, left[label] - 1
    return (right / (sequences * n_way)).tolist()


def test_counting_accuracy_by_hand():
    # 2 classes seen once each: the first label is a coin toss, the second is certain.
    assert counting_accuracy(2, 1, sequences=200) == [0.75]


@pytest.mark.parametrize("name", ["mann_omniglot_3way", "lstm_omniglot_3way"])
def test_shipped_mann_binds_drawings_to_labels(name, real_omniglot, monkeypatch):
    """The MANN of chapter 08 and its LSTM baseline are right on later sights of a class far
    more often than counting the labels, which needs no drawing; their sidecars reproduce."""
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = SHIPPED / name
    sidecar = checkpoints.load(stem)["sidecar"]
    assert sidecar["command"].startswith("python -m metalib train mann-omniglot ")
    assert sidecar["metrics"]["steps"] == sidecar["config"]["meta_steps"]
    config = sidecar["config"]
    recorded = sidecar["metrics"]["test_accuracy"]["by_instance"]
    counting = counting_accuracy(config["n_way"], config["instances"])
    for sight in range(2, config["instances"] + 1):
        assert recorded[str(sight)]["mean"] > counting[sight - 1] + 0.2, (recorded, counting)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        argv = ["evaluate", f"{stem}.pt", "--episodes", "200", "--device", "cpu"]
        assert cli.main(argv) == 0
    result = json.loads(out.getvalue())["by_instance"]
    for sight, value in result.items():
        assert abs(value["mean"] - recorded[sight]["mean"]) <= 3 * value["ci95"], (sight, value)
