import json
import os

import pytest
import torch

from metalib import checkpoints, files, recipes, runtime
from metalib.models import SinusoidMLP
from metalib.recipes.sinusoid import SinusoidConfig


def save_model(path, model=None, **kw):
    model = model or SinusoidMLP()
    return checkpoints.save(
        path,
        recipe="sinusoid-maml",
        config=SinusoidConfig().to_dict(),
        state_dict=model.state_dict(),
        metrics={"x": 1.0},
        command="python -m metalib train sinusoid-maml",
        **kw,
    )


def test_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SinusoidMLP()
    pt, js = save_model(tmp_path / "m", model, wall_time_s=1.5)
    assert pt.name == "m.pt" and js.name == "m.json"
    run = recipes.load(tmp_path / "m.pt")
    loaded, config = run.model, run.config
    assert config == SinusoidConfig()
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor)
    sidecar = json.loads(js.read_text())
    for key in (
        "config",
        "metrics",
        "device",
        "wall_time_s",
        "command",
        "metalib_version",
        "sha256",
    ):
        assert key in sidecar
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.pt"]


def test_missing_checkpoint_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.pt not found.*metalib train"):
        checkpoints.load(tmp_path / "nope.pt")


def test_missing_sidecar(tmp_path):
    save_model(tmp_path / "m")
    (tmp_path / "m.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"m\.json not found"):
        checkpoints.load(tmp_path / "m")


def test_mismatched_pair_is_rejected(tmp_path):
    save_model(tmp_path / "a")
    save_model(tmp_path / "b", SinusoidMLP(hidden=(8,)))
    (tmp_path / "b.pt").replace(tmp_path / "a.pt")
    with pytest.raises(ValueError, match=r"a\.pt does not match its sidecar"):
        checkpoints.load(tmp_path / "a.pt")


def test_corrupt_file_is_rejected(tmp_path):
    save_model(tmp_path / "a")
    sidecar = json.loads((tmp_path / "a.json").read_text())
    (tmp_path / "a.pt").write_bytes(b"not a checkpoint")
    import hashlib

    sidecar["sha256"] = hashlib.sha256(b"not a checkpoint").hexdigest()
    (tmp_path / "a.json").write_text(json.dumps(sidecar))
    with pytest.raises(ValueError, match="cannot be read"):
        checkpoints.load(tmp_path / "a")


def test_wrong_recipe_and_wrong_architecture(tmp_path):
    save_model(tmp_path / "a")
    with pytest.raises(ValueError, match="'sinusoid-maml', not 'protonet'"):
        checkpoints.load(tmp_path / "a", recipe="protonet")
    checkpoints.save(
        tmp_path / "b",
        recipe="sinusoid-maml",
        config=SinusoidConfig().to_dict(),
        state_dict=SinusoidMLP(hidden=(8,)).state_dict(),
    )
    with pytest.raises(ValueError, match="does not hold a SinusoidMLP"):
        recipes.load(tmp_path / "b")


def test_failed_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_model(tmp_path / "m")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = files.write_temporary
    calls = []

    def fail_on_sidecar(target, data):
        calls.append(target)
        if target.suffix == ".json":
            raise OSError("disk full")
        return real(target, data)

    monkeypatch.setattr(files, "write_temporary", fail_on_sidecar)
    with pytest.raises(OSError, match="disk full"):
        save_model(tmp_path / "m", SinusoidMLP(hidden=(8,)))
    assert len(calls) == 2
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # same files, same bytes, no temporary left behind
    checkpoints.load(tmp_path / "m")


def test_save_into_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        save_model(tmp_path / "no" / "m")


def test_saved_files_get_the_mode_of_an_ordinary_file(tmp_path):
    old = os.umask(0o022)
    try:
        pt, js = save_model(tmp_path / "m")
    finally:
        os.umask(old)
    assert pt.stat().st_mode & 0o777 == 0o644 and js.stat().st_mode & 0o777 == 0o644


def test_a_sidecar_that_is_not_json_is_named(tmp_path):
    save_model(tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"m.json is not JSON .*retrain"):
        checkpoints.load(tmp_path / "m")
    (tmp_path / "m.json").write_text("[]")
    with pytest.raises(ValueError, match=r"m.json is not a metalib checkpoint sidecar"):
        checkpoints.load(tmp_path / "m")


def test_a_checkpoint_here_comes_before_a_shipped_one_of_the_same_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert checkpoints.path_of("sinusoid_maml").parent == runtime.checkpoint_dir()
    save_model(tmp_path / "sinusoid_maml")
    assert checkpoints.path_of("sinusoid_maml").resolve() == tmp_path / "sinusoid_maml.pt"
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint named 'nothing'"):
        checkpoints.path_of("nothing")
