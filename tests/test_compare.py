import dataclasses
import json

import pytest

from metalib import checkpoints, compare, pretrained


def _entry(method, family, results, paper=None, name="x"):
    return compare.Entry(name, method, family, results, paper or {}, 12.0, 300, "cpu (2 threads)")


def test_omniglot_entries_are_the_vinyals_checkpoints_with_their_recorded_accuracy():
    entries = {e.checkpoint: e for e in compare.omniglot_entries()}
    assert "protonet_omniglot_lake_1shot" not in entries  # another split's test set
    assert "cnp_sinusoid" not in entries
    proto = entries["protonet_omniglot_1shot"]
    assert (proto.method, proto.family) == ("Prototypical", "metric")
    for setting, result in proto.results.items():
        assert result == pretrained.recorded_accuracy("protonet_omniglot_1shot", setting)
    assert proto.paper["5-way 1-shot"] == 98.8 and proto.paper["20-way 1-shot"] == 96.0
    sidecar = checkpoints.read_sidecar(pretrained.path_of("protonet_omniglot_1shot"))
    assert proto.train_minutes == pytest.approx(sidecar["wall_time_s"] / 60)
    assert entries["transfer_omniglot"].paper == {}  # no paper reports it on Omniglot


def test_omniglot_rows_put_the_best_first_within_each_setting():
    a = _entry("A", "metric", {"5-way 1-shot": {"mean": 0.9, "ci95": 0.01, "episodes": 10}})
    b = _entry(
        "B",
        "transfer",
        {
            "5-way 1-shot": {"mean": 0.95, "ci95": 0.01, "episodes": 10},
            "20-way 1-shot": {"mean": 0.5, "ci95": 0.02, "episodes": 10},
        },
        paper={"5-way 1-shot": 97.0},
    )
    rows = compare.omniglot_rows([a, b])
    assert [(r["setting"], r["method"]) for r in rows] == [
        ("5-way 1-shot", "B"),
        ("5-way 1-shot", "A"),
        ("20-way 1-shot", "B"),
    ]
    assert rows[0]["paper"] == pytest.approx(0.97) and rows[1]["paper"] is None
    table = compare.omniglot_table([a, b]).splitlines()
    assert len(table) == 2 + 3
    assert "| 5-way 1-shot | B | transfer | 95.0 ± 1.0 | 97.0 | 10 |" in table[2]


def test_sinusoid_entries_read_maml_by_step_and_the_cnp_without_steps():
    entries = {e.method: e for e in compare.sinusoid_entries()}
    cnp = checkpoints.read_sidecar(pretrained.path_of("cnp_sinusoid"))["metrics"]
    assert entries["CNP"].results == {
        "0": {
            "mean": cnp["test_k5_1000_tasks"]["mse"],
            "ci95": cnp["test_k5_1000_tasks"]["mse_ci95"],
        }
    }
    assert entries["MAML"].paper == {"1": 0.67, "5": 0.38, "10": 0.35}
    assert set(entries["MAML"].results) >= set(compare.SINUSOID_STEPS)


def test_sinusoid_table_names_diverged_steps_instead_of_a_mean():
    e = _entry(
        "Meta-SGD",
        "optimization",
        {"1": {"mean": 0.4, "ci95": 0.03}, "5": {"mean": None, "ci95": None, "diverged_tasks": 7}},
        paper={"1": 0.5},
    )
    row = compare.sinusoid_table([e]).splitlines()[2]
    assert "0.400 ± 0.030 (paper 0.5)" in row and "diverged (7 tasks)" in row and "| — |" in row


def test_test_time_cost_reads_the_benchmark_record(tmp_path, monkeypatch):
    path = tmp_path / "results" / "test_time_cost.json"
    monkeypatch.setattr(compare, "results_path", lambda: path)
    assert compare.test_time_cost("cpu") is None
    path.parent.mkdir()
    path.write_text(json.dumps({"cpu": {"device": "cpu (2 threads)", "omniglot": {}}}))
    assert compare.test_time_cost("cpu")["device"] == "cpu (2 threads)"
    assert compare.test_time_cost("cuda") is None


def test_the_shipped_benchmark_record_covers_every_checkpoint():
    record = compare.test_time_cost("cpu")
    assert record is not None, "run: python benchmarks/test_time_cost.py --save"
    omniglot = {e.checkpoint for e in compare.omniglot_entries() if e.method != "MANN"}
    assert set(record["omniglot"]) == omniglot
    assert set(record["sinusoid"]) == {e.checkpoint for e in compare.sinusoid_entries()}
    assert all(r["ms_per_task"] > 0 for r in record["omniglot"].values())


def test_claims_about_cpu_budgets_read_the_cpu_trained_rows_only():
    cpu = _entry("MAML", "optimization", {"5-way 1-shot": {"mean": 0.92, "ci95": 0.01}}, name="c")
    gpu = compare.Entry(
        "g",
        "MAML",
        "optimization",
        {"5-way 1-shot": {"mean": 0.987, "ci95": 0.004}},
        {},
        90.0,
        60_000,
        "cuda (NVIDIA H200)",
    )
    both = dataclasses.replace(
        gpu,
        checkpoint="b",
        train_device="cuda (NVIDIA H200) for 12,000 steps, then cpu (2 threads) for 8,000 steps",
    )
    rows = compare.omniglot_rows([cpu, gpu, both])
    assert [r["checkpoint"] for r in rows] == ["g", "b", "c"]
    assert [r["checkpoint"] for r in compare.trained_on(rows, "cpu")] == ["c"]
    assert [r["checkpoint"] for r in compare.trained_on(rows, "cuda")] == ["g"]  # not "b"


def test_a_checkpoint_the_benchmark_has_not_timed_has_no_cost():
    record = {"omniglot": {"c": {"ms_per_task": 40.0}}, "sinusoid": {"s": {"ms_per_task": 1.0}}}
    assert compare.ms_per_task(record, "c") == 40.0 and compare.ms_per_task(record, "s") == 1.0
    assert compare.ms_per_task(record, "maml_omniglot_5w1s") is None


def test_the_seed_record_covers_every_sinusoid_recipe_and_its_summary_agrees():
    from metalib.recipes import sinusoid

    record = compare.sinusoid_seeds()
    for method in sinusoid.METHODS:
        runs = [r for r in record["runs"] if r["method"] == method]
        assert [r["seed"] for r in runs] == [0, 1, 2, 3, 4], method
        summary = record["summary"][method]
        for steps in ("1", "5", "10"):
            values = [r["mse"][steps] for r in runs]
            if None in values:  # some tasks diverged: no mean is given
                assert "mean" not in summary[f"mse_{steps}"]
                continue
            mean = sum(values) / len(values)
            assert abs(summary[f"mse_{steps}"]["mean"] - mean) < 1e-4, (method, steps)
    table = compare.seed_table(record, sinusoid.METHODS)
    assert table.count("(mean ± sd)") == len(sinusoid.METHODS)


def test_every_seed_of_the_shipped_maml_recipe_meets_the_papers_targets():
    """Finn et al. 2017, K = 5: at most 0.38 after 5 steps and 0.35 after 10, every seed."""
    record = compare.sinusoid_seeds()
    runs = [r for r in record["runs"] if r["method"] == "maml"]
    assert len(runs) == 5 and record["overrides"] == {}
    for run in runs:
        assert run["mse"]["5"] <= 0.38 and run["mse"]["10"] <= 0.35, run
        assert run["within_target"] and run["diverged_tasks"]["10"] == 0


@pytest.mark.parametrize(
    ("name", "method", "overrides"),
    [
        ("maml_one_inner_step", "maml", {"inner_steps": 1}),
        ("fomaml_two_inner_steps", "fomaml", {"inner_steps": 2}),
        (
            "meta_sgd_5_steps",
            "meta-sgd",
            {"inner_steps": 5, "clip_steps": 0.05, "outer_lr": 0.001},
        ),
        ("anil_k5", "anil", {"k_shot": 5}),
        ("pretrain_36000_steps", "pretrain", {"validate_every": 0}),  # the last step kept
        ("pretrain_4500_steps", "pretrain", {"meta_steps": 4500, "validate_every": 0}),
    ],
)
def test_the_measured_alternatives_say_what_they_changed(name, method, overrides):
    from metalib.recipes import sinusoid

    record = compare.sinusoid_seeds(name)
    assert record["overrides"] == overrides
    assert {r["method"] for r in record["runs"]} == {method}
    assert [r["seed"] for r in record["runs"]] == [0, 1, 2, 3, 4]
    shipped = sinusoid.config(f"sinusoid-{method}")
    assert any(getattr(shipped, k) != v for k, v in overrides.items()), "not an alternative"


@pytest.mark.parametrize(
    ("name", "overrides"),
    [
        ("lstm_meta_second_order", {"first_order": False}),
        ("lstm_meta_10_steps", {"inner_steps": 10}),
    ],
)
def test_the_learned_rules_variants_are_recorded_at_the_shipped_budget(name, overrides):
    """Chapter 04's exercise solutions read these: seed 0 of the shipped recipe, one change."""
    record = compare.sinusoid_seeds(name)
    assert record["overrides"] == overrides and record["device"] == "cpu (1 thread)"
    (run,) = record["runs"]
    assert (run["method"], run["seed"]) == ("lstm-meta", 0)
    assert set(run["mse"]) == {"1", "5", "10", "20"}


def test_an_unknown_seed_record_is_named():
    with pytest.raises(ValueError, match="name='nope'"):
        compare.sinusoid_seeds("nope")
