"""Record: Omniglot checkpoints against a reference network, episode by episode.

Run from the repository root (about a minute per checkpoint and setting on 2 CPU cores)::

    python benchmarks/paired_accuracy.py RUN.pt [RUN.pt ...] [--against protonet_omniglot_1shot] \
        [--k-shot 5] [--out data/results/protonet_5shot_seeds.json]

Each checkpoint and the reference score the same episodes: the 1,000 test episodes of every
sidecar (seed 2017) at 5-way and 20-way, and the 200 validation episodes (seed 2016) at
20-way that the 5-shot recipe chooses its step on. Two networks' intervals overlap long
before their difference is noise: what makes an episode hard is mostly shared, so the record
gives the mean and 95% interval of the per-episode difference (``minus_reference``), whose
interval is several times narrower. Each checkpoint's test accuracy is checked against its
sidecar (the same episodes, so the same number) before anything is written; the record is
written atomically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from torch import Tensor

from metalib import evaluation, files, recipes
from metalib.data import omniglot
from metalib.recipes import metric_omniglot

DEFAULT_OUT = Path("data/results/protonet_5shot_seeds.json")
# (where, setting, n_way, episodes, seed): the sidecars' test episodes, the recipe's validation.
CHECKS = (
    ("test", "20-way", 20, metric_omniglot.TEST_EPISODES, evaluation.TEST_SEED),
    ("test", "5-way", 5, metric_omniglot.TEST_EPISODES, evaluation.TEST_SEED),
    ("validation", "20-way", 20, 200, evaluation.VALIDATION_SEED),
)


def per_episode(run: recipes.Run, data, where: str, n_way: int, k_shot: int, n: int, seed: int):
    split = "test" if where == "test" else "val"
    sampler = evaluation.evaluation_sampler(data, split=split, n_way=n_way, k_shot=k_shot)
    return metric_omniglot.per_episode_accuracy(
        run.model, run.config, sampler, n_episodes=n, seed=seed
    )


def scores(accuracy: dict[tuple[str, str], Tensor]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for (where, setting), values in accuracy.items():
        table.setdefault(where, {})[setting] = evaluation.score(values).to_dict()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="PATH.pt of metric-family checkpoints")
    parser.add_argument("--against", default="protonet_omniglot_1shot", help="the reference")
    parser.add_argument("--k-shot", type=int, default=5, help="support images per class")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = omniglot.load(download=False)
    k = args.k_shot

    def all_checks(run: recipes.Run) -> dict[tuple[str, str], Tensor]:
        return {
            (where, f"{setting} {k}-shot"): per_episode(run, data, where, n_way, k, n, seed)
            for where, setting, n_way, n, seed in CHECKS
        }

    reference = all_checks(recipes.load(args.against, family=metric_omniglot))
    record: dict = {
        "what": __doc__.split("\n\n")[0],
        "command": "python benchmarks/paired_accuracy.py "
        + " ".join([*args.checkpoints, "--against", args.against, "--k-shot", str(k)]),
        "reference": {"checkpoint": args.against, "accuracy": scores(reference)},
        "runs": [],
    }
    for path in args.checkpoints:
        run = recipes.load(path, family=metric_omniglot)
        sidecar = run.sidecar
        accuracy = all_checks(run)
        for (where, setting), values in accuracy.items():
            if where != "test":
                continue
            recorded = sidecar["metrics"]["test_accuracy"].get(setting)
            if recorded is None:
                raise SystemExit(f"{path}: no {setting} accuracy in its sidecar; pass --k-shot")
            if abs(float(values.mean()) - recorded["mean"]) > 1e-5:
                raise SystemExit(f"{path}: {setting} {values.mean():.6f} is not its sidecar's")
        gaps = {key: values - reference[key] for key, values in accuracy.items()}
        record["runs"].append(
            {
                "checkpoint": path,
                "command": sidecar["command"],
                "seed": sidecar["config"]["seed"],
                "device": sidecar["device"],
                "wall_time_s": sidecar["wall_time_s"],
                "steps": sidecar["metrics"]["steps"],
                "selection": sidecar["metrics"].get("selection"),
                "accuracy": scores(accuracy),
                "minus_reference": scores(gaps),
            }
        )
        print(path, json.dumps(record["runs"][-1]["minus_reference"]), flush=True)
    files.atomic_write(args.out, (json.dumps(record, indent=1) + "\n").encode())
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
