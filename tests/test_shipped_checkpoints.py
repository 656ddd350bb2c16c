"""The shipped checkpoints meet the course's quality bar, measured by the command line.

Targets (K = 5, 1,000 held-out tasks, inner step 0.01): MAML test MSE ≤ 0.38 after 5
steps and ≤ 0.35 after 10 (Finn et al. 2017 report 0.38 / 0.35); the pretrained baseline
stays ≥ 2.0 after 10 steps.
"""

import json

import pytest

from metalib import checkpoints, cli, runtime

SHIPPED = runtime.checkpoint_dir()


def evaluate(name, capsys):
    assert (
        cli.main(
            [
                "evaluate",
                str(SHIPPED / f"{name}.pt"),
                "--k-shot",
                "5",
                "--tasks",
                "1000",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    return json.loads(capsys.readouterr().out)["mse"]


def test_shipped_maml_reaches_the_paper(capsys):
    mse = evaluate("sinusoid_maml", capsys)
    assert mse["5"]["mean"] <= 0.38 and mse["10"]["mean"] <= 0.35, mse


def test_shipped_pretrained_baseline_cannot_adapt(capsys):
    mse = evaluate("sinusoid_pretrain", capsys)
    assert mse["10"]["mean"] >= 2.0, mse


@pytest.mark.parametrize("name", ["sinusoid_maml", "sinusoid_pretrain"])
def test_sidecars_record_how_they_were_made(name):
    blob = checkpoints.load(SHIPPED / name)
    sidecar = blob["sidecar"]
    assert sidecar["command"].startswith(f"python -m metalib train {blob['recipe']} --out ")
    assert sidecar["wall_time_s"] > 0 and sidecar["device"]
    assert sidecar["config"]["meta_steps"] == sidecar["metrics"]["steps"]
    assert (SHIPPED / f"{name}.pt").stat().st_size < 1_000_000
