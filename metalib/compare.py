"""Every method of the course side by side: the tables and plot of chapter 09.

Nothing here is typed in except the papers' values, each with its citation. Our numbers
are read from two kinds of evaluation output:

- a shipped checkpoint's sidecar, where ``python -m metalib train`` wrote the test
  evaluation it ran after training: Omniglot accuracy over the course's test episodes
  (vinyals split, seed 2017, 15 queries per class: the same episodes for every method,
  the first 600 for MAML, all 1,000 for the others), and the sinusoid MSE over the same
  1,000 held-out tasks;
- ``data/results/test_time_cost.json``, written by ``benchmarks/test_time_cost.py``:
  the test-time cost of one task for each checkpoint, per device;
- ``data/results/sinusoid_seeds.json``, written by ``benchmarks/sinusoid_seeds.py``: every
  sinusoid recipe trained with seeds 0 to 4 and tested as its checkpoint is (chapters 02
  and 03 show it).

``python -m metalib evaluate PATH.pt`` re-runs any single evaluation;
``tests/test_shipped_checkpoints.py`` checks that the sidecars agree with it.
Taught in ``notebooks/09_comparison.ipynb``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from metalib import checkpoints, checks, pretrained, runtime

SETTINGS = ("5-way 1-shot", "5-way 5-shot", "20-way 1-shot", "20-way 5-shot")

# Method name and family of each Omniglot recipe (the families of chapter 00).
OMNIGLOT_METHODS = {
    "maml-omniglot": ("MAML", "optimization"),
    "fomaml-omniglot": ("FOMAML", "optimization"),
    "protonet-omniglot": ("Prototypical", "metric"),
    "matching-omniglot": ("Matching", "metric"),
    "siamese-omniglot": ("Siamese", "metric"),
    "protomaml-omniglot": ("ProtoMAML", "metric + optimization"),
    "mann-omniglot": ("MANN", "model"),
    "transfer-omniglot": ("Transfer (pretrain + new head)", "transfer"),
}

# The papers' Omniglot accuracies in %, in the order of SETTINGS.
PAPER_OMNIGLOT = {
    "MAML": (98.7, 99.9, 95.8, 98.9),  # Finn et al. 2017, Table 1
    "FOMAML": (98.3, 99.2, 89.4, 97.9),  # Finn et al. 2017, Table 1 (first-order approx.)
    "Prototypical": (98.8, 99.7, 96.0, 98.9),  # Snell et al. 2017, Table 1
    "Matching": (98.1, 98.9, 93.8, 98.5),  # Vinyals et al. 2016, Table 1
    "Siamese": (97.3, 98.4, 88.2, 97.0),  # Koch et al. 2015, as in Vinyals et al. 2016
}

# The MAML paper's sinusoid MSE after 1, 5 and 10 steps, K = 5 (Finn et al. 2017).
PAPER_SINUSOID = {"MAML": {1: 0.67, 5: 0.38, 10: 0.35}}

# Accuracy by instance, 5 classes (Santoro et al. 2016, Table 1), in %.
PAPER_MANN = {
    "MANN": {1: 36.4, 2: 82.8, 3: 91.0, 4: 92.6, 5: 94.9, 10: 98.1},
    "LSTM": {1: 24.4, 2: 49.5, 3: 55.3, 4: 61.0, 5: 63.6, 10: 62.5},
}

SINUSOID_STEPS = ("0", "1", "5", "10")
SINUSOID_METHODS = {
    "maml": ("MAML", "optimization"),
    "fomaml": ("FOMAML", "optimization"),
    "reptile": ("Reptile", "optimization"),
    "meta-sgd": ("Meta-SGD", "optimization"),
    "anil": ("ANIL", "optimization"),
    "lstm-meta": ("LSTM meta-learner", "optimization"),
    "pretrain": ("pretrained, then fine-tuned", "transfer"),
}


@dataclass(frozen=True)
class Entry:
    """One shipped checkpoint's evaluation, training cost and paper values.

    ``results`` maps a setting (``"5-way 1-shot"``, or for sinusoids an inner-step
    count) to ``{"mean", "ci95", ...}``; ``paper`` maps the same keys to a paper's value.
    """

    checkpoint: str
    method: str
    family: str
    results: dict[str, dict]
    paper: dict[str, float]
    train_minutes: float
    train_steps: int
    train_device: str


def _training(sidecar: dict) -> dict:
    return {
        "train_minutes": sidecar["wall_time_s"] / 60,
        "train_steps": int(sidecar["metrics"].get("steps", sidecar["config"].get("meta_steps", 0))),
        "train_device": sidecar["device"],
    }


def omniglot_entries() -> list[Entry]:
    """Every shipped Omniglot checkpoint tested on the vinyals split's test episodes."""
    entries = []
    for name in pretrained.shipped():
        sidecar = checkpoints.read_sidecar(pretrained.path_of(name))
        recipe, config = sidecar["recipe"], sidecar["config"]
        if recipe not in OMNIGLOT_METHODS or config.get("scheme", "vinyals") != "vinyals":
            continue
        method, family = OMNIGLOT_METHODS[recipe]
        if recipe == "maml-omniglot" and config.get("first_order"):
            method = "FOMAML"
        results = {s: r for s in SETTINGS if (r := pretrained.recorded_accuracy(name, s))}
        paper = dict(zip(SETTINGS, PAPER_OMNIGLOT.get(method, ())))
        entries.append(Entry(name, method, family, results, paper, **_training(sidecar)))
    return entries


def sinusoid_entries(*, k_shot: int = 5) -> list[Entry]:
    """Every shipped sinusoid checkpoint: query MSE on the 1,000 held-out tasks.

    The MAML family's results are keyed by inner steps (``"0"``, ``"1"``, ``"5"``,
    ``"10"``); a CNP takes no step, so its one result is keyed ``"0"``.
    """
    entries = []
    for name in pretrained.shipped():
        sidecar = checkpoints.read_sidecar(pretrained.path_of(name))
        recipe, metrics = sidecar["recipe"], sidecar["metrics"]
        if recipe == "cnp-sinusoid":
            score = metrics[f"test_k{k_shot}_1000_tasks"]
            results = {"0": {"mean": score["mse"], "ci95": score["mse_ci95"]}}
            entry = Entry(name, "CNP", "model", results, {}, **_training(sidecar))
        elif recipe.startswith("sinusoid-"):
            results = dict(metrics[f"test_mse_k{k_shot}_1000_tasks"])
            method, family = SINUSOID_METHODS[recipe.removeprefix("sinusoid-")]
            method += _variant(recipe, sidecar["config"])
            paper = {str(s): v for s, v in PAPER_SINUSOID.get(method, {}).items()}
            entry = Entry(name, method, family, results, paper, **_training(sidecar))
        else:
            continue
        entries.append(entry)
    return entries


def _variant(recipe: str, config: dict) -> str:
    """What a sinusoid checkpoint's config changes from its recipe's, e.g. `` (k_shot=5)``
    (training budgets and the seed aside); empty for the recipe itself."""
    from metalib.recipes import sinusoid

    defaults = sinusoid.config(recipe).to_dict()
    changed = [
        f"{k}={v}"
        for k, v in sorted(config.items())
        if k not in ("meta_steps", "seed") and k in defaults and defaults[k] != v
    ]
    return f" ({', '.join(changed)})" if changed else ""


def results_path() -> Path:
    """``data/results/test_time_cost.json`` in the repository (shipped with the course)."""
    return runtime.checkpoint_dir().parent / "results" / "test_time_cost.json"


def test_time_cost(kind: str = "cpu") -> dict | None:
    """The benchmark's record for a device kind (``"cpu"`` or ``"cuda"``), or None.

    Returns:
        ``{"device", "threads", "tasks", "omniglot": {checkpoint: {"ms_per_task", ...}},
        "sinusoid": {...}, "command"}`` as ``benchmarks/test_time_cost.py`` wrote it.
    """
    path = results_path()
    if not path.is_file():
        return None
    return json.loads(path.read_text()).get(kind)


SEED_RECORDS = {  # name: its file in data/results
    "shipped": "sinusoid_seeds.json",  # the shipped recipes
    "maml_one_inner_step": "sinusoid_seeds_one_inner_step.json",  # the paper's one step
    "fomaml_two_inner_steps": "sinusoid_seeds_fomaml_two_inner_steps.json",
    "meta_sgd_5_steps": "sinusoid_seeds_meta_sgd_5_steps.json",  # steps in [0, 0.05]
    "anil_k5": "sinusoid_seeds_anil_k5.json",  # trained with K = 5
    # the pretrained baseline kept at its last step, not its best validated one: after the
    # shipped 36,000 steps, and after the 4,500 of the other recipes (shipped until 1 December)
    "pretrain_36000_steps": "sinusoid_seeds_pretrain_36000_steps.json",
    "pretrain_4500_steps": "sinusoid_seeds_pretrain_4500_steps.json",
    # chapter 04's exercises: the learned rule with second-order terms, and trained for 10 steps
    "lstm_meta_second_order": "sinusoid_seeds_lstm_meta_second_order.json",
    "lstm_meta_10_steps": "sinusoid_seeds_lstm_meta_10_steps.json",
}


def sinusoid_seeds(name: str = "shipped") -> dict:
    """A record of ``benchmarks/sinusoid_seeds.py``: ``{"runs": [...], "summary": {method:
    {"seeds", "mse_1", "mse_5", "mse_10", ...}}, "targets", "overrides", ...}``. ``name``
    is one of :data:`SEED_RECORDS`: the shipped recipes, or an alternative that was measured.

    Raises:
        FileNotFoundError: if the record is missing (run the benchmark to write it).
    """
    checks.one_of("name", name, tuple(SEED_RECORDS))
    path = results_path().with_name(SEED_RECORDS[name])
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run python benchmarks/sinusoid_seeds.py.")
    return json.loads(path.read_text())


def seed_table(record: dict, methods: tuple[str, ...]) -> str:
    """Each method's K = 5 test MSE over seeds: one row per run, then mean ± sd."""
    lines = [f"{'method':10s}{'seed':>5s}{'1 step':>9s}{'5 steps':>9s}{'10 steps':>10s}"]
    for method in methods:
        for run in (r for r in record["runs"] if r["method"] == method):
            mse = [_number(run["mse"][s]) for s in ("1", "5", "10")]
            lines.append(f"{method:10s}{run['seed']:>5d}{mse[0]:>9s}{mse[1]:>9s}{mse[2]:>10s}")
        summary = record["summary"][method]
        cells = [
            f"{v['mean']:.3f} ± {v['sd']:.3f}" if "mean" in v else "diverged"
            for v in (summary[f"mse_{s}"] for s in ("1", "5", "10"))
        ]
        lines.append(f"{method:10s}{'all':>5s}  " + " · ".join(cells) + "  (mean ± sd)")
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "diverged" if value is None else f"{value:.3f}"


def omniglot_rows(entries: list[Entry]) -> list[dict]:
    """One row per checkpoint and evaluated setting, best first within each setting.

    Each row: ``setting, method, family, checkpoint, mean, ci95, episodes, paper`` (the
    paper's accuracy as a fraction, or None), ``train_minutes`` and ``train_device``.
    """
    rows = [
        {
            "setting": setting,
            "method": e.method,
            "family": e.family,
            "checkpoint": e.checkpoint,
            **{k: result.get(k) for k in ("mean", "ci95", "episodes")},
            "paper": None if e.paper.get(setting) is None else e.paper[setting] / 100,
            "train_minutes": e.train_minutes,
            "train_device": e.train_device,
        }
        for e in entries
        for setting, result in e.results.items()
    ]
    return sorted(rows, key=lambda r: (SETTINGS.index(r["setting"]), -r["mean"]))


def trained_on(rows: list[dict], kind: str) -> list[dict]:
    """The rows of checkpoints trained on devices of ``kind`` only (``"cpu"`` or ``"cuda"``;
    a run resumed on another kind of device, or partly unrecorded, is in neither).

    Chapter 09's claims about the course's CPU budgets are checked on the CPU-trained rows,
    so checkpoints trained at the papers' budgets on a GPU join the tables without
    changing what those claims say.
    """
    return [r for r in rows if runtime.device_kinds(r["train_device"]) == {kind}]


def ms_per_task(record: dict, checkpoint: str) -> float | None:
    """A checkpoint's test-time cost in a :func:`test_time_cost` record, or None if the
    benchmark has not timed it (run ``benchmarks/test_time_cost.py --save`` again)."""
    timed = {**record.get("omniglot", {}), **record.get("sinusoid", {})}
    return timed[checkpoint]["ms_per_task"] if checkpoint in timed else None


def omniglot_table(entries: list[Entry]) -> str:
    """A markdown table of :func:`omniglot_rows`: accuracy in % with 95% intervals."""
    lines = [
        "| setting | method | family | ours (%) | paper (%) | episodes | checkpoint | training |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in omniglot_rows(entries):
        paper = "—" if r["paper"] is None else f"{100 * r['paper']:.1f}"
        lines.append(
            f"| {r['setting']} | {r['method']} | {r['family']} | "
            f"{100 * r['mean']:.1f} ± {100 * r['ci95']:.1f} | {paper} | {r['episodes']:,} | "
            f"`{r['checkpoint']}` | {r['train_minutes']:.0f} min, {r['train_device']} |"
        )
    return "\n".join(lines)


def _mse(result: dict | None) -> str:
    if result is None:
        return "—"
    if result["mean"] is None:  # some tasks diverged at this step: no honest mean
        return f"diverged ({result['diverged_tasks']} tasks)"
    return f"{result['mean']:.3f} ± {result['ci95']:.3f}"


def sinusoid_table(entries: list[Entry]) -> str:
    """A markdown table of query MSE (K = 5) after 0, 1, 5 and 10 steps, paper in brackets."""
    rows = [
        "| method | family | " + " | ".join(f"{s} steps" for s in SINUSOID_STEPS) + " | training |",
        "| --- | --- |" + " --- |" * (len(SINUSOID_STEPS) + 1),
    ]
    for e in entries:
        cells = []
        for s in SINUSOID_STEPS:
            cell, paper = _mse(e.results.get(s)), e.paper.get(s)
            cells.append(cell if paper is None else f"{cell} (paper {paper})")
        training = f"{e.train_steps:,} steps, {e.train_minutes:.1f} min, {e.train_device}"
        rows.append(f"| {e.method} | {e.family} | {' | '.join(cells)} | {training} |")
    return "\n".join(rows)


__all__ = [
    "OMNIGLOT_METHODS",
    "PAPER_MANN",
    "PAPER_OMNIGLOT",
    "PAPER_SINUSOID",
    "SETTINGS",
    "Entry",
    "ms_per_task",
    "omniglot_entries",
    "omniglot_rows",
    "omniglot_table",
    "results_path",
    "seed_table",
    "sinusoid_entries",
    "sinusoid_seeds",
    "sinusoid_table",
    "test_time_cost",
    "trained_on",
]
