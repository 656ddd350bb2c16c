"""A shipped recipe re-created bit for bit: the command recorded in a reference checkpoint,
made earlier on this project's CPU machine with the locked torch, run again in a fresh
process, writes the same bytes (docs/retraining.md, "Reproducing them").

PyTorch picks its CPU kernels by the processor's vector instructions, and sums split over
threads; the promise holds where both match the reference's (``*.host.json``), and the
test says so and skips elsewhere.
"""

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metalib import checkpoints

REFERENCE = Path(__file__).parent / "data" / "sinusoid_maml_200_steps"
HOST = json.loads(REFERENCE.with_suffix(".host.json").read_text())


def test_the_sinusoid_recipe_recreates_its_reference_bit_for_bit(tmp_path):
    sidecar = json.loads(REFERENCE.with_suffix(".json").read_text())
    if sidecar["torch_version"] != torch.__version__:
        pytest.skip(
            f"the reference was made with torch {sidecar['torch_version']}; bit-for-bit "
            f"equality is promised only with that release, not {torch.__version__}"
        )
    here = (torch.backends.cpu.get_cpu_capability(), torch.get_num_threads())
    if here != (HOST["cpu_capability"], HOST["threads"]):
        pytest.skip(f"the reference was made with {HOST}; this machine has {here}")
    argv = shlex.split(sidecar["command"])
    assert argv[:3] == ["python", "-m", "metalib"] and "--out" in argv
    argv[argv.index("--out") + 1] = str(tmp_path / "again")
    subprocess.run([sys.executable, *argv[1:]], check=True, capture_output=True)
    again = json.loads((tmp_path / "again.json").read_text())
    ours, theirs = checkpoints.load(tmp_path / "again"), checkpoints.load(REFERENCE)
    for name, value in theirs["state_dict"].items():
        assert torch.equal(ours["state_dict"][name], value), f"{name} differs"
    assert again["sha256"] == sidecar["sha256"], "the same checkpoint, byte for byte"
    assert again["metrics"] == sidecar["metrics"], "and the same test errors"


SINUSOID = sorted(name for name in checkpoints.shipped() if name.startswith("sinusoid_"))


@pytest.mark.parametrize("path", [REFERENCE] + [checkpoints.path_of(n) for n in SINUSOID])
def test_a_sinusoid_checkpoint_holds_the_config_its_command_makes_today(path):
    """A checkpoint's file holds its config, so `make checkpoints` re-creates the shipped
    files byte for byte only while each holds exactly what its command asks for today: every
    setting, in order. A setting added to the recipes since they were made breaks that for
    all of them (the weights stay the same): retrain them with `make checkpoints` then."""
    from metalib import cli

    blob = checkpoints.load(path)
    argv = shlex.split(checkpoints.read_sidecar(path)["command"])
    config = cli.config_of(cli.build_parser().parse_args(argv[3:])).to_dict()
    assert list(blob["config"].items()) == list(config.items())
