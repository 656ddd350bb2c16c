"""The full-budget command: its scheduler, deadline, packing and resume, proven on a CPU
with tiny budgets (``--smoke``), and its imports limited to the GPU machine's packages."""

import contextlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from metalib import checkpoints, cli, full_budget, runtime


def full_budget_command(*argv):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(["full-budget", *argv]) == 0
    return json.loads(printed.getvalue())


def test_smoke_run_stops_packs_unpacks_and_resumes_to_an_uninterrupted_run(
    real_omniglot, tmp_path, monkeypatch
):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    names = [job.name for job in full_budget.SMOKE_JOBS]
    first, packed = tmp_path / "first", tmp_path / "packed"
    # A deadline too short for the jobs: each stops at a step boundary, or never starts.
    summary = full_budget_command(
        "--smoke",
        "--out",
        str(first),
        "--deadline",
        "10",
        "--workers",
        "2",
        "--pack",
        str(packed),
        "--skip-checks",
    )
    states = {name: summary["jobs"][name]["state"] for name in names}
    assert set(states.values()) <= {"stopped", "pending"} and "stopped" in states.values(), states
    assert sorted(p.name for p in packed.iterdir()) == ["part-1.tar", "summary.json"]

    # Back on another machine: unpack into a fresh folder and run the same command again.
    second = tmp_path / "second"
    unpacked = full_budget_command("--unpack", str(packed), "--out", str(second))["unpacked"]
    assert {f"{n}.resume.pt" for n, s in states.items() if s == "stopped"} <= set(unpacked)
    summary = full_budget_command(
        "--smoke", "--out", str(second), "--deadline", "120", "--workers", "2", "--skip-checks"
    )
    assert {summary["jobs"][n]["state"] for n in names} == {"finished"}
    assert not list(second.glob("*.resume.pt")), "finished runs leave no state"
    again = full_budget_command(
        "--smoke", "--out", str(second), "--deadline", "60", "--skip-checks"
    )
    assert all(again["jobs"][n]["steps_this_run"] == 0 for n in names), "finished jobs are skipped"

    whole = tmp_path / "whole"
    full_budget_command(
        "--smoke", "--out", str(whole), "--deadline", "120", "--workers", "2", "--skip-checks"
    )
    for name in names:
        resumed, straight = checkpoints.load(second / name), checkpoints.load(whole / name)
        for key, value in straight["state_dict"].items():
            assert torch.equal(resumed["state_dict"][key], value), (name, key)
        assert resumed["sidecar"]["metrics"] == straight["sidecar"]["metrics"], name

    # Landing: re-evaluated here (on a CPU, as the GPU's results are), moved to the shelf.
    shelf = tmp_path / "checkpoints"
    shelf.mkdir()
    gaps = full_budget_command("--out", str(second), "--land", str(shelf))
    assert gaps["landed_largest_cpu_gpu_gap"] == dict.fromkeys(names, 0.0)
    assert not list(second.glob("*.pt")) and len(list(shelf.glob("*.pt"))) == len(names)
    landed = checkpoints.load(shelf / names[0])["sidecar"]["metrics"]
    assert landed["gpu_metrics"] and landed["trained_with_torch"] == torch.__version__


def test_checks_run_the_cuda_tests_and_compare_one_step_with_the_cpu(real_omniglot):
    job = full_budget.SMOKE_JOBS[0]
    check = full_budget.check_one_step(job, torch.device("cpu"), real_omniglot, smoke=True)
    assert check["agree"] and len(check["cpu"]) == 2
    assert check["on_device"] == check["cpu"], "on the CPU twice, the very same steps"
    assert full_budget.check_cuda_tests()["returncode"] in (0, 5)  # 5: all skipped, no GPU


def test_pack_refuses_what_would_not_come_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "big.resume.pt").write_bytes(b"x" * 2048)
    monkeypatch.setattr(full_budget, "PART_LIMIT", 1024)
    with pytest.raises(ValueError, match=r"big.resume.pt is .* over a part.s"):
        full_budget.pack(out, tmp_path / "dest")
    monkeypatch.setattr(full_budget, "PART_LIMIT", 4096)
    monkeypatch.setattr(full_budget, "MAX_PARTS", 1)
    (out / "other.resume.pt").write_bytes(b"x" * 3000)
    with pytest.raises(ValueError, match="2 parts are needed, more than 1"):
        full_budget.pack(out, tmp_path / "dest")


def test_unpack_refuses_paths_outside_the_folder(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    outside = tmp_path / "evil.pt"
    outside.write_bytes(b"x")
    with tarfile.open(source / "part-1.tar", "w") as tar:
        tar.add(outside, arcname="../evil.pt")
    with pytest.raises(ValueError, match="outside"):
        full_budget.unpack(source, tmp_path / "out")
    assert not (tmp_path / "out" / "evil.pt").exists()


def test_unknown_job_names_are_refused(tmp_path, capsys):
    code = cli.main(["full-budget", "--out", str(tmp_path), "--only", "maml_omniglot_7w1s"])
    assert code == 2 and "no jobs named ['maml_omniglot_7w1s']" in capsys.readouterr().err


def test_every_job_is_a_valid_train_command():
    parser = cli.build_parser()
    for job in full_budget.JOBS:
        for flags in (job.flags, job.flags + job.smoke):
            args = parser.parse_args(["train", job.recipe, *flags, "--out", "x"])
            assert cli.config_of(args).recipe == job.recipe
    assert [j.name for j in full_budget.JOBS][:6] == [
        "protonet_omniglot_1shot",
        "protonet_omniglot_5shot",
        "protonet_omniglot_lake_1shot",
        "matching_omniglot_1shot",
        "siamese_omniglot_1shot",
        "transfer_omniglot",
    ], "cheap ones first"


def test_the_command_imports_only_what_the_gpu_machine_has():
    """The GPU machine has torch, torchvision, numpy, pillow, matplotlib, tqdm and pytest,
    and nothing can be installed there: past those and their own imports, the command and
    the training processes it starts import only the standard library and metalib."""
    probe = """
import json, sys
import matplotlib, numpy, PIL, pytest, torch, torchvision, tqdm
import torchvision.transforms.v2
baseline = set(sys.modules)
import metalib.cli, metalib.full_budget, metalib.recipes, metalib.data.omniglot
new = {name.split(".")[0] for name in set(sys.modules) - baseline}
gpu_image = {"matplotlib", "numpy", "PIL", "pytest", "torch", "torchvision", "tqdm", "metalib"}
print(json.dumps(sorted(new - set(sys.stdlib_module_names) - gpu_image)))
"""
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=runtime.REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_a_job_that_landed_with_its_configuration_is_finished(tmp_path, monkeypatch):
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    monkeypatch.setattr(runtime, "checkpoint_dir", lambda: shelf)
    job = full_budget.JOBS[0]
    out = tmp_path / "out"
    assert full_budget.state_of(job, out) == ("pending", 0, 0.0)

    def land(config):
        checkpoints.save(
            shelf / job.name,
            recipe=job.recipe,
            config=config,
            state_dict={},
            metrics={"steps": 20_000},
            wall_time_s=600.0,
        )

    cpu_budget = {**full_budget.job_config(job).to_dict(), "meta_steps": 3000}
    land(cpu_budget)  # the shipped CPU checkpoint of the same name: not this job
    assert full_budget.state_of(job, out)[0] == "pending"
    land(full_budget.job_config(job).to_dict())
    assert full_budget.state_of(job, out) == ("finished", 20_000, 600.0)
    # Written before a setting was added (here ``patience``), at its default: still this job.
    older = full_budget.job_config(job).to_dict()
    assert older.pop("patience") == 0
    land(older)
    assert full_budget.state_of(job, out) == ("finished", 20_000, 600.0)


def test_an_unpacked_checkpoint_retires_the_resume_state_left_here(tmp_path):
    there, here, packed = tmp_path / "there", tmp_path / "here", tmp_path / "packed"
    for folder in (there, here):
        folder.mkdir()
    (there / "job.pt").write_bytes(b"weights")
    (there / "job.json").write_text("{}")
    (there / "other.resume.pt").write_bytes(b"state")
    (here / "job.resume.pt").write_bytes(b"stale state of the last session")
    full_budget.pack(there, packed)
    names = full_budget.unpack(packed, here)
    assert sorted(names) == ["job.json", "job.pt", "other.resume.pt"]
    assert not (here / "job.resume.pt").exists() and (here / "other.resume.pt").is_file()
    with pytest.raises(FileNotFoundError, match="no part-"):
        full_budget.unpack(tmp_path / "there", here)


def test_a_landed_checkpoints_command_makes_it_in_one_go():
    command = (
        "python -m metalib train protonet-omniglot --k-shot 1 --meta-steps 20000 --out "
        "data/full_budget/protonet_omniglot_1shot --device cuda --no-progress --save-every 200 "
        "--deadline 480.0"
    )
    landed = full_budget._landed_command(command, Path("data/checkpoints/protonet_omniglot_1shot"))
    assert landed == (
        "python -m metalib train protonet-omniglot --k-shot 1 --meta-steps 20000 --device cuda "
        "--no-progress --out data/checkpoints/protonet_omniglot_1shot"
    )
