"""Record: every sinusoid recipe trained with several seeds, against the paper's targets.

Run from the repository root (about 13 minutes per seed for all seven recipes on 2 CPU cores)::

    python benchmarks/sinusoid_seeds.py [--methods maml pretrain] [--seeds 0 1 2 3 4] \
        [--set outer_lr_schedule=cosine] [--out data/results/sinusoid_seeds.json] [--update]

Each run is the shipped recipe (``sinusoid.config``) with its seed and the ``--set``
overrides, trained on the CPU, then tested as its checkpoint's sidecar is: K = 5, MSE over
the 1,000 held-out tasks after 1, 5 and 10 steps, and after 20 (records made since 30 November
2026), to see what runs longer than it trained does. Beside the test error it records how
training went (the loss of the first and last 100 steps, and the largest jump of the loss
between consecutive 100-step means), which is what tells a diverging run from a slow one.
For Reptile that "loss" is its surrogate, half the squared distance its inner loop moves the
weights (``reptile.surrogate_loss``): small, and rising as the meta-learner learns to move.

The targets are those of Finn et al. 2017 (Table 2, K = 5): MAML at most 0.38 after 5
steps and 0.35 after 10; the pretrained baseline about 2.2 (2.23 and 2.19), here taken
as within ±0.25. The other methods have no target there and are reported as they are.
The record is written after every run (atomically), so a stopped record keeps its runs. A run
that carries its own ``device`` was made on other threads than the record's (and merged in).
``--update`` reruns only the named methods in an existing record (after a change to their
recipes), keeping the other methods' runs.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path

import torch

from metalib import files, runtime
from metalib.recipes import sinusoid

TARGETS = {  # method: {steps: (low, high)} on the K = 5 test MSE
    "maml": {5: (0.0, 0.38), 10: (0.0, 0.35)},
    "pretrain": {5: (1.98, 2.48), 10: (1.94, 2.44)},
}
DEFAULT_OUT = Path("data/results/sinusoid_seeds.json")


def parse_override(text: str) -> tuple[str, object]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--set {text!r}: write NAME=VALUE")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value  # a plain string, e.g. cosine


def training_summary(losses: list[float]) -> dict[str, float]:
    """First and last 100-step means of the loss and its largest rise between blocks."""
    blocks = [statistics.fmean(losses[i : i + 100]) for i in range(0, len(losses), 100)]
    rises = [b / a for a, b in itertools.pairwise(blocks) if a > 0]
    return {
        "loss_first_100": round(blocks[0], 4),
        "loss_last_100": round(blocks[-1], 4),
        "largest_rise": round(max(rises, default=1.0), 3),
    }


def one_run(method: str, seed: int, overrides: dict[str, object]) -> dict[str, object]:
    config = sinusoid.config(f"sinusoid-{method}", seed=seed, **overrides)
    start = time.perf_counter()
    run = sinusoid.train(config, device="cpu", progress=False)
    seconds = time.perf_counter() - start
    mse = sinusoid.metrics(run)["test_mse_k5_1000_tasks"]
    longer = sinusoid.mse_by_step(run, k_shot=5, n_tasks=1000, max_steps=20).to_dict((20,))
    mse = {**mse, **longer}
    row = {
        "method": method,
        "seed": seed,
        "mse": {str(s): mse[str(s)]["mean"] for s in (1, 5, 10, 20)},
        "interval": {str(s): mse[str(s)]["ci95"] for s in (1, 5, 10, 20)},
        "diverged_tasks": {str(s): mse[str(s)]["diverged_tasks"] for s in (1, 5, 10, 20)},
        "seconds": round(seconds, 1),
        **training_summary([float(v) for v in run.history.losses]),
    }
    if run.history.selected:  # chosen on validation tasks (``validate_every``)
        row["kept_step"] = run.history.selected["step"]
        row["validation"] = [
            [step, round(score, 4) if math.isfinite(score) else None]
            for step, score in run.history.validation
        ]
    targets = TARGETS.get(method, {})
    row["within_target"] = all(
        row["mse"][str(s)] is not None and lo <= row["mse"][str(s)] <= hi
        for s, (lo, hi) in targets.items()
    )
    return row


def summarise(rows: list[dict]) -> dict[str, dict[str, object]]:
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        out[method] = {
            "seeds": [r["seed"] for r in mine],
            "all_within_target": all(r["within_target"] for r in mine)
            if method in TARGETS
            else None,
        }
        for s in ("1", "5", "10"):
            values = [r["mse"][s] for r in mine if r["mse"][s] is not None]
            if len(values) < len(mine):  # some runs diverged on some tasks: no mean
                out[method][f"mse_{s}"] = {"runs_with_diverged_tasks": len(mine) - len(values)}
                continue
            out[method][f"mse_{s}"] = {
                "mean": round(statistics.fmean(values), 4),
                "sd": round(statistics.stdev(values), 4) if len(values) > 1 else None,
                "min": round(min(values), 4),
                "max": round(max(values), 4),
            }
    return out


def kept_runs(path: Path, record: dict, methods: list[str]) -> list[dict]:
    """The runs of the record at ``path`` whose method is not in ``methods``, if that record
    was made with the same overrides, device and torch (else the update would mix them)."""
    if not path.exists():
        raise SystemExit(f"--update: there is no record at {path}; run without --update.")
    earlier = json.loads(path.read_text())
    for key in ("overrides", "device", "torch"):
        if earlier[key] != record[key]:
            raise SystemExit(
                f"--update: {path} was made with {key}={earlier[key]!r}, this run has "
                f"{record[key]!r}; rerun every method instead."
            )
    return [run for run in earlier["runs"] if run["method"] not in methods]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", nargs="+", default=list(sinusoid.METHODS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", type=parse_override, action="append", default=[])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--update",
        action="store_true",
        help="replace only these methods' runs in the record at --out, keeping the others "
        "(after a change to some recipes)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(args.set)
    record = {
        "what": "K = 5 test MSE over 1,000 held-out tasks after 1, 5 and 10 steps, and after "
        "20 in runs made since 30 November 2026",
        "overrides": overrides,
        "device": runtime.describe_device(torch.device("cpu")),
        "torch": torch.__version__,
        "targets": {m: {str(s): t for s, t in v.items()} for m, v in TARGETS.items()},
        "runs": [],
    }
    if args.update:
        record["runs"] = kept_runs(args.out, record, args.methods)
    print(
        f"{'method':10s}{'seed':>5s}{'1 step':>9s}{'5 steps':>9s}{'10 steps':>9s}"
        f"{'last loss':>11s}{'rise':>7s}{'s':>7s}  target"
    )
    for method in args.methods:
        for seed in args.seeds:
            row = one_run(method, seed, overrides)
            record["runs"].append(row)
            record["runs"].sort(key=lambda r: (sinusoid.METHODS.index(r["method"]), r["seed"]))
            record["summary"] = summarise(record["runs"])
            args.out.parent.mkdir(parents=True, exist_ok=True)
            files.atomic_write(args.out, (json.dumps(record, indent=1) + "\n").encode())
            mark = "" if method not in TARGETS else ("ok" if row["within_target"] else "MISSED")
            m = {s: "div" if v is None else f"{v:.3f}" for s, v in row["mse"].items()}
            print(
                f"{method:10s}{seed:>5d}{m['1']:>9s}{m['5']:>9s}{m['10']:>9s}"
                f"{row['loss_last_100']:>11.3f}{row['largest_rise']:>7.2f}{row['seconds']:>7.0f}"
                f"  {mark}",
                flush=True,
            )
    for method, summary in record["summary"].items():
        parts = [
            f"{s}: {v['mean']:.3f} ± {v['sd'] or 0:.3f}" if "mean" in v else f"{s}: diverged"
            for s, v in ((s, summary[f"mse_{s}"]) for s in ("1", "5", "10"))
        ]
        print(f"{method}: mean ± sd over seeds {summary['seeds']} — " + ", ".join(parts))
    print(f"record: {args.out}")


if __name__ == "__main__":
    main()
