import pytest
import torch

from metalib import runtime


def test_quick_reads_the_environment_once(monkeypatch):
    runtime.quick.cache_clear()
    monkeypatch.setenv("METALIB_QUICK", "1")
    assert runtime.quick() is True
    monkeypatch.setenv("METALIB_QUICK", "0")
    assert runtime.quick() is True  # cached: read once per process
    runtime.quick.cache_clear()
    assert runtime.quick() is False
    runtime.quick.cache_clear()


def test_quick_rejects_non_boolean(monkeypatch):
    runtime.quick.cache_clear()
    monkeypatch.setenv("METALIB_QUICK", "maybe")
    with pytest.raises(ValueError, match="METALIB_QUICK='maybe'"):
        runtime.quick()
    runtime.quick.cache_clear()


def test_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("METALIB_DATA", raising=False)
    assert runtime.data_dir() == runtime.REPO_ROOT / "data"
    monkeypatch.setenv("METALIB_DATA", str(tmp_path))
    assert runtime.data_dir() == tmp_path


def test_cache_dir_follows_data_dir_unless_set(monkeypatch, tmp_path):
    monkeypatch.setenv("METALIB_DATA", str(tmp_path / "archives"))
    monkeypatch.delenv("METALIB_CACHE", raising=False)
    assert runtime.cache_dir() == tmp_path / "archives"
    monkeypatch.setenv("METALIB_CACHE", str(tmp_path / "cache"))
    assert runtime.cache_dir() == tmp_path / "cache"


def test_device_choice(monkeypatch):
    monkeypatch.delenv("METALIB_DEVICE", raising=False)
    assert runtime.device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert runtime.device().type == expected
    monkeypatch.setenv("METALIB_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")


def test_an_apple_gpu_is_used_only_when_asked_for(monkeypatch, capsys):
    monkeypatch.delenv("METALIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(runtime, "_mps_noted", False)
    assert runtime.device() == torch.device("cpu")
    assert runtime.device() == torch.device("cpu")
    err = capsys.readouterr().err
    assert err.count(runtime.MPS_NOTE) == 1, "the reason is printed once"
    assert "METALIB_DEVICE=mps" in err and "float64" in err
    assert runtime.device("mps") == torch.device("mps")
    monkeypatch.setenv("METALIB_DEVICE", "mps")
    assert runtime.device() == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("METALIB_DEVICE")
    assert runtime.device() == torch.device("cuda")
    assert capsys.readouterr().err == ""


def test_without_an_apple_gpu_nothing_is_printed(monkeypatch, capsys):
    monkeypatch.delenv("METALIB_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setattr(runtime, "_mps_noted", False)
    assert runtime.device() == torch.device("cpu")
    assert capsys.readouterr().err == ""
    with pytest.raises(ValueError, match="'mps' requested but MPS is not available"):
        runtime.device("mps")


def test_bad_device_names_the_value():
    with pytest.raises(ValueError, match="'gpu0'"):
        runtime.device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runtime.device("cuda")


def test_seed_everything_is_reproducible():
    g = runtime.seed_everything(3)
    a = torch.rand(2), torch.rand(2, generator=g)
    g = runtime.seed_everything(3)
    b = torch.rand(2), torch.rand(2, generator=g)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="seed=-1"):
        runtime.seed_everything(-1)


def test_steal_share_reads_proc_stat_format(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n")
    before = runtime.cpu_times(stat)
    assert before == (35, 1000)  # steal is the 8th field; the total sums the first eight
    stat.write_text("cpu  200 0 100 1500 10 0 5 185 0 0\n")
    assert runtime.steal_share(before, runtime.cpu_times(stat)) == pytest.approx(150 / 1000)
    assert runtime.cpu_times(tmp_path / "missing") is None
    assert runtime.steal_share(None, before) is None and runtime.steal_share(before, before) is None


def test_budget_follows_the_setting_then_the_device(monkeypatch):
    monkeypatch.delenv("METALIB_BUDGET", raising=False)
    assert runtime.budget(torch.device("cpu")) == "demo"
    assert runtime.budget(torch.device("cuda")) == "full"
    monkeypatch.setenv("METALIB_BUDGET", "full")
    assert runtime.budget(torch.device("cpu")) == "full"
    monkeypatch.setenv("METALIB_BUDGET", "Demo")
    assert runtime.budget(torch.device("cuda")) == "demo"
    monkeypatch.setenv("METALIB_BUDGET", "paper")
    with pytest.raises(ValueError, match=r"METALIB_BUDGET='paper'.*demo or full"):
        runtime.budget()
