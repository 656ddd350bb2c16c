import json
import subprocess
import sys

import pytest

from metalib import cli, runtime


def run(argv, capsys):
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_train_then_evaluate(tmp_path, capsys):
    stem = tmp_path / "maml"
    code, out, _ = run(
        [
            "train",
            "sinusoid-maml",
            "--out",
            str(stem),
            "--meta-steps",
            "5",
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0
    report = json.loads(out)
    assert report["steps"] == 5 and (tmp_path / "maml.pt").is_file()
    sidecar = json.loads((tmp_path / "maml.json").read_text())
    assert sidecar["command"].startswith("python -m metalib train sinusoid-maml --out")
    assert sidecar["config"]["meta_steps"] == 5 and sidecar["wall_time_s"] >= 0
    assert set(sidecar["metrics"]["test_mse_k5_1000_tasks"]) == {"0", "1", "5", "10"}

    code, out, _ = run(
        ["evaluate", str(tmp_path / "maml.pt"), "--tasks", "20", "--device", "cpu"], capsys
    )
    assert code == 0
    result = json.loads(out)
    assert set(result["mse"]) == {"0", "1", "5", "10"}
    assert result["k_shot"] == 5 and result["tasks"] == 20
    assert all(v["mean"] > 0 and v["ci95"] > 0 for v in result["mse"].values())


def test_first_order_and_options_reach_the_config(tmp_path, capsys):
    code, _, _ = run(
        [
            "train",
            "sinusoid-maml",
            "--out",
            str(tmp_path / "f"),
            "--meta-steps",
            "2",
            "--first-order",
            "--k-shot",
            "3",
            "--inner-steps",
            "2",
            "--seed",
            "7",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0
    config = json.loads((tmp_path / "f.json").read_text())["config"]
    assert config["first_order"] and config["k_shot"] == 3
    assert config["inner_steps"] == 2 and config["seed"] == 7


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "sinusoid-nope", "--out", "x"], "invalid choice: 'sinusoid-nope'"),
        (["train", "sinusoid-maml", "--out", "x", "--k-shot", "two"], "invalid int value"),
        (["train", "maml-omniglot", "--out", "x", "--split", "alphabet"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_with_usage(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_non_finite_learning_rate_is_named(tmp_path, capsys):
    code, _, err = run(
        [
            "train",
            "sinusoid-maml",
            "--out",
            str(tmp_path / "x"),
            "--inner-lr",
            "nan",
            "--meta-steps",
            "1",
        ],
        capsys,
    )
    assert code == 2 and "inner_lr=nan" in err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_missing_checkpoint(tmp_path, capsys):
    code, _, err = run(["evaluate", str(tmp_path / "none.pt")], capsys)
    assert code == 2 and "none.pt not found" in err


def test_module_entry_point_help():
    def help_of(*argv):
        command = [sys.executable, "-m", "metalib", *argv, "--help"]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    assert "sinusoid-pretrain" in help_of("train") and "protonet-omniglot" in help_of("train")
    maml = help_of("train", "sinusoid-maml")
    assert "--first-order" in maml and "(default: 4500)" in maml and "--n-way" not in maml
    omniglot = help_of("train", "maml-omniglot")
    assert "(default: 60000)" in omniglot and "--batch-norm {transductive,running}" in omniglot


# What a command imports, in a fresh interpreter: the modules named below cost seconds of
# start-up, and neither the help nor a sinusoid run needs them.
HEAVY = ("torchvision.transforms", "matplotlib", "ipywidgets", "IPython")
IMPORTS_OF = """
import sys
from metalib import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
heavy = sorted(m for m in sys.modules if m.startswith({heavy!r}))
print("HEAVY", heavy)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "sinusoid-maml", "--help"],
        ["train", "sinusoid-maml", "--meta-steps", "2", "--meta-batch-size", "3", "--no-progress"],
        ["train", "cnp-sinusoid", "--help"],
    ],
    ids=["help", "train-help", "train-sinusoid", "cnp-help"],
)
def test_the_command_line_imports_only_what_it_needs(argv, tmp_path):
    if "--help" not in argv:
        argv = [*argv, "--out", str(tmp_path / "run")]
    code = IMPORTS_OF.format(heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, check=True
    )
    assert "HEAVY []" in done.stdout, done.stdout[-500:]
    if "--help" not in argv:
        assert (tmp_path / "run.pt").exists(), "the run really trained and saved"


@pytest.mark.parametrize(
    "recipe", ["fomaml", "reptile", "meta-sgd", "anil", "lstm-meta", "pretrain"]
)
def test_every_recipe_trains_saves_and_evaluates(recipe, tmp_path, capsys):
    stem = tmp_path / recipe
    code, _, err = run(
        [
            "train",
            f"sinusoid-{recipe}",
            "--out",
            str(stem),
            "--meta-steps",
            "3",
            "--meta-batch-size",
            "4",
            "--no-progress",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    config = json.loads((tmp_path / f"{recipe}.json").read_text())["config"]
    assert config["method"] == recipe
    expected = {"maml": 2, "reptile": 5, "anil": 5, "lstm-meta": 5, "pretrain": 0}.get(recipe, 1)
    assert config["inner_steps"] == expected
    assert config["first_order"] == (recipe in ("fomaml", "lstm-meta"))
    code, out, err = run(
        ["evaluate", str(stem) + ".pt", "--tasks", "20", "--device", "cpu"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["recipe"] == f"sinusoid-{recipe}"
    assert (result["inner_lr"] == "learned (Meta-SGD)") == (recipe == "meta-sgd")
    assert (result["inner_lr"] == "learned rule (LSTM meta-learner)") == (recipe == "lstm-meta")


def test_a_flag_that_is_on_by_default_can_be_turned_off(tmp_path, capsys):
    stem = tmp_path / "second"
    argv = ["train", "sinusoid-lstm-meta", "--out", str(stem), "--meta-steps", "1"]
    argv += ["--meta-batch-size", "2", "--rule-hidden", "2", "--no-first-order", "--no-progress"]
    code, _, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "second.json").read_text())["config"]["first_order"] is False
    with pytest.raises(SystemExit):
        run(["train", "sinusoid-lstm-meta", "--help"], capsys)
    out = capsys.readouterr().out
    assert "--first-order, --no-first-order" in out and "(default: on)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "sinusoid-maml", "--k-shot", "0"], "k_shot=0"),
        (["train", "sinusoid-maml", "--inner-steps", "-1"], "inner_steps=-1"),
        (["train", "sinusoid-reptile", "--inner-steps", "0"], "reptile' needs inner_steps >= 1"),
        (["train", "sinusoid-meta-sgd", "--inner-lr", "inf"], "inner_lr=inf"),
        (["train", "sinusoid-lstm-meta", "--inner-lr", "1.5"], "in (0, 1)"),
        (["train", "sinusoid-lstm-meta", "--rule-hidden", "0"], "rule_hidden=0"),
    ],
)
def test_recipe_specific_bad_input(argv, message, tmp_path, capsys):
    code, _, err = run([*argv, "--out", str(tmp_path / "x"), "--meta-steps", "1"], capsys)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_data_reports_the_official_counts(real_omniglot, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))  # already built
    code, out, _ = run(["data", "--no-download"], capsys)
    assert code == 0
    report = json.loads(out)
    assert report["images"] == 32_460 and report["image_shape"] == [28, 28]
    background = report["archives"]["images_background"]
    assert (background["alphabets"], background["characters"], background["images"]) == (
        30,
        964,
        19_280,
    )
    evaluation = report["archives"]["images_evaluation"]
    assert (evaluation["alphabets"], evaluation["characters"], evaluation["images"]) == (
        20,
        659,
        13_180,
    )
    vinyals = report["splits"]["vinyals"]
    assert [vinyals[s]["characters"] for s in ("train", "val", "test")] == [1_028, 172, 423]
    assert vinyals["train"]["classes"] == 4_112
    assert report["splits"]["lake"]["test"] == {
        "alphabets": 20,
        "characters": 659,
        "classes": 2_636,
        "images": 13_180,
    }


def test_data_without_archives_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(tmp_path))
    monkeypatch.delenv("METALIB_CACHE", raising=False)
    code, _, err = run(["data", "--no-download"], capsys)
    assert code == 2
    assert f"images_background.zip not found in {tmp_path}" in err and "METALIB_DATA" in err
    assert list(tmp_path.iterdir()) == []


def test_train_resume_and_evaluate_maml_on_omniglot(real_omniglot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = tmp_path / "maml_5w1s"
    argv = [
        "train",
        "maml-omniglot",
        "--out",
        str(stem),
        "--meta-steps",
        "2",
        "--meta-batch-size",
        "2",
    ]
    argv += ["--episodes", "8", "--device", "cpu", "--no-progress"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == 2 and report["test_episodes"] == 8
    assert set(report["test_accuracy_by_step"]) == {"0", "1", "2", "3"}  # 3 test steps for 5-way
    assert not (tmp_path / "maml_5w1s.resume.pt").exists(), "a finished run leaves no resume state"
    sidecar = json.loads((tmp_path / "maml_5w1s.json").read_text())
    assert sidecar["recipe"] == "maml-omniglot" and sidecar["config"]["inner_lr"] == 0.4
    assert sidecar["command"].startswith("python -m metalib train maml-omniglot")

    code, out, err = run(
        ["evaluate", str(stem) + ".pt", "--episodes", "8", "--device", "cpu"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert (result["n_way"], result["k_shot"], result["split"], result["episodes"]) == (
        5,
        1,
        "vinyals",
        8,
    )
    assert 0 <= result["accuracy"]["mean"] <= 1

    code, _, err = run(["evaluate", str(stem) + ".pt", "--n-way", "20", "--episodes", "8"], capsys)
    assert code == 2 and "20-way: evaluate it with n_way=5" in err


@pytest.mark.parametrize("recipe", ["protonet-omniglot", "matching-omniglot", "siamese-omniglot"])
def test_train_and_evaluate_metric_recipes(recipe, real_omniglot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = tmp_path / "model"
    argv = ["train", recipe, "--out", str(stem), "--n-way", "5", "--k-shot", "1"]
    argv += ["--train-way", "10", "--meta-steps", "2", "--episodes", "4", "--device", "cpu"]
    code, out, err = run([*argv, "--no-progress"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["steps"] == 2 and set(report["test_accuracy"]) == {
        "5-way 1-shot",
        "20-way 1-shot",
    }
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["recipe"] == recipe and sidecar["config"]["train_way"] == 10
    assert sidecar["command"].startswith(f"python -m metalib train {recipe}")

    evaluate = ["evaluate", str(stem) + ".pt", "--episodes", "4", "--device", "cpu"]
    code, out, err = run([*evaluate, "--n-way", "20", "--k-shot", "5"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["recipe"], result["n_way"], result["k_shot"], result["episodes"]) == (
        recipe,
        20,
        5,
        4,
    )
    assert 0 <= result["accuracy"]["mean"] <= 1

    code, _, err = run([*evaluate, "--k-shot", "6"], capsys)  # 6 + 15 queries > 20 drawers
    assert code == 2 and "exceeds the 20 images per class" in err
    code, _, err = run([*evaluate, "--n-way", "5000"], capsys)
    assert code == 2 and "n_way=5000" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train-way", "1"], "train_way=1"),
        (["--k-query", "0"], "k_query=0"),
    ],
)
def test_metric_recipe_bad_flags(flags, message, real_omniglot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    argv = ["train", "protonet-omniglot", "--out", str(tmp_path / "x"), "--meta-steps", "1"]
    code, _, err = run([*argv, *flags], capsys)
    assert code == 2 and message in err
    assert list(tmp_path.iterdir()) == []


def test_train_and_evaluate_cnp(tmp_path, capsys):
    stem = tmp_path / "cnp"
    argv = ["train", "cnp-sinusoid", "--out", str(stem), "--meta-steps", "4"]
    code, out, err = run([*argv, "--meta-batch-size", "8", "--seed", "3", "--no-progress"], capsys)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "cnp.json").read_text())
    assert sidecar["recipe"] == "cnp-sinusoid" and sidecar["metrics"]["steps"] == 4
    assert (sidecar["config"]["meta_batch_size"], sidecar["config"]["seed"]) == (8, 3)
    recorded = sidecar["metrics"]["test_k5_1000_tasks"]
    assert recorded["tasks"] == 1000 and recorded["mse"] > 0
    code, out, err = run(["evaluate", str(stem) + ".pt", "--device", "cpu"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["recipe"], result["k_shot"], result["tasks"]) == ("cnp-sinusoid", 5, 1000)
    assert abs(result["mse"]["mean"] - recorded["mse"]) < 1e-5  # the same 1,000 tasks
    code, out, err = run(["evaluate", str(stem) + ".pt", "--k-shot", "10", "--tasks", "50"], capsys)
    assert code == 0 and json.loads(out)["k_shot"] == 10
    code, out, err = run(["evaluate", str(stem) + ".pt", "--inner-lr", "0.1"], capsys)
    assert code == 2 and "--inner-lr does not apply to cnp-sinusoid" in err


def test_train_and_evaluate_mann(real_omniglot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = tmp_path / "mann"
    argv = ["train", "mann-omniglot", "--out", str(stem), "--n-way", "3", "--instances", "4"]
    argv += ["--meta-steps", "2", "--meta-batch-size", "2", "--episodes", "6", "--device", "cpu"]
    code, out, err = run([*argv, "--no-progress"], capsys)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "mann.json").read_text())
    config = sidecar["config"]
    assert (config["n_way"], config["instances"], config["meta_batch_size"]) == (3, 4, 2)
    recorded = sidecar["metrics"]["test_accuracy"]
    assert set(recorded["by_instance"]) == {"1", "2", "3", "4"} and recorded["episodes"] == 6

    code, out, err = run(["evaluate", str(stem) + ".pt", "--episodes", "6"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert (result["recipe"], result["n_way"], result["instances"]) == ("mann-omniglot", 3, 4)
    assert result["by_instance"] == recorded["by_instance"]  # the same test sequences
    code, _, err = run(["evaluate", str(stem) + ".pt", "--k-shot", "2"], capsys)
    assert code == 2 and "--k-shot does not apply to mann-omniglot" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--instances", "20"], "exceeds the 20"),
        (["--n-way", "1"], "n_way=1"),
    ],
)
def test_mann_bad_flags(flags, message, real_omniglot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    argv = ["train", "mann-omniglot", "--out", str(tmp_path / "x"), "--meta-steps", "1", *flags]
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err and list(tmp_path.iterdir()) == []


def test_train_and_evaluate_transfer(real_omniglot, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("METALIB_DATA", str(real_omniglot.data_dir))
    monkeypatch.setenv("METALIB_CACHE", str(real_omniglot.cache_path.parent))
    stem = tmp_path / "transfer"
    argv = ["train", "transfer-omniglot", "--out", str(stem), "--meta-steps", "2"]
    argv += ["--meta-batch-size", "16", "--episodes", "4", "--device", "cpu", "--no-progress"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    sidecar = json.loads((tmp_path / "transfer.json").read_text())
    assert (sidecar["config"]["batch_size"], sidecar["config"]["fine_tune"]) == (16, "head")
    assert set(sidecar["metrics"]["test_accuracy"]) == {
        "5-way 1-shot",
        "5-way 5-shot",
        "20-way 1-shot",
        "20-way 5-shot",
    }
    evaluate = ["evaluate", str(stem) + ".pt", "--episodes", "4", "--device", "cpu"]
    code, out, err = run(evaluate, capsys)
    assert code == 0, err
    result = json.loads(out)
    recorded = sidecar["metrics"]["test_accuracy"]["5-way 1-shot"]["mean"]
    assert result["accuracy"]["mean"] == pytest.approx(recorded, abs=1e-6)  # the same episodes
    code, out, err = run(
        [*evaluate, "--fine-tune", "whole", "--n-way", "3", "--k-shot", "2"], capsys
    )
    assert code == 0, err
    result = json.loads(out)
    assert (result["fine_tune"], result["n_way"], result["k_shot"]) == ("whole", 3, 2)


# Flags another recipe takes (or none does): argparse refuses them before anything runs.
FOREIGN_FLAGS = [
    ("sinusoid-maml", ["--n-way", "5"]),
    ("sinusoid-maml", ["--episodes", "10"]),
    ("sinusoid-reptile", ["--first-order"]),
    ("sinusoid-pretrain", ["--inner-steps", "2"]),
    ("maml-omniglot", ["--train-way", "20"]),
    ("maml-omniglot", ["--instances", "3"]),
    ("fomaml-omniglot", ["--first-order"]),
    ("protonet-omniglot", ["--inner-lr", "0.1"]),
    ("protonet-omniglot", ["--first-order"]),
    ("protonet-omniglot", ["--scale", "5"]),
    ("matching-omniglot", ["--distance", "cosine"]),
    ("siamese-omniglot", ["--fine-tune", "head"]),
    ("cnp-sinusoid", ["--inner-lr", "0.1"]),
    ("cnp-sinusoid", ["--k-shot", "5"]),
    ("cnp-sinusoid", ["--n-way", "5"]),
    ("mann-omniglot", ["--inner-steps", "1"]),
    ("mann-omniglot", ["--k-shot", "1"]),
    ("mann-omniglot", ["--fine-tune", "head"]),
    ("transfer-omniglot", ["--k-shot", "1"]),
    ("transfer-omniglot", ["--n-way", "5"]),
]


@pytest.mark.parametrize(("recipe", "flags"), FOREIGN_FLAGS)
def test_train_refuses_the_flags_of_other_recipes(recipe, flags, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", recipe, "--out", str(tmp_path / "x"), *flags])
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {' '.join(flags)}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_evaluate_refuses_options_of_other_recipes(capsys):
    maml = str(runtime.checkpoint_dir() / "sinusoid_maml.pt")
    code, _, err = run(["evaluate", maml, "--fine-tune", "head"], capsys)
    assert code == 2 and "--fine-tune does not apply to sinusoid-maml checkpoints" in err
    assert "(they take --k-shot, --tasks, --inner-lr)" in err


def test_a_deadline_stops_training_and_keeps_its_state(tmp_path, capsys):
    argv = ["train", "sinusoid-maml", "--out", str(tmp_path / "m"), "--meta-steps", "100000"]
    code, _, err = run([*argv, "--deadline", "0.5", "--no-progress", "--device", "cpu"], capsys)
    assert code == 3 and "of 100000 steps" in err and "run the same command to go on" in err
    assert (tmp_path / "m.resume.pt").is_file() and not (tmp_path / "m.pt").exists()
    code, _, err = run([*argv, "--deadline", "0"], capsys)
    assert code == 2 and "deadline=0" in err
