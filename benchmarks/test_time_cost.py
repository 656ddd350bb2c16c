"""Benchmark: what one new task costs at test time, for every shipped checkpoint.

Run from the repository root with the archives in the data directory::

    METALIB_DATA=path/to/omniglot python benchmarks/test_time_cost.py [--device cuda]
        [--tasks 30 --threads 2 --save]

- Omniglot: milliseconds to score one 5-way 1-shot test episode (5 support images, 75
  queries), from images to query scores. Each method does what it does at test time:
  ProtoNets, Matching and Siamese networks embed and compare; MAML takes its test-time
  inner steps; the transfer baseline fits a new head on frozen features.
- Sinusoids: milliseconds per task with K = 5 and 100 query points: the MAML family
  adapts for 10 steps, a CNP reads the context once.

Every method runs in this process, one task at a time, after two warm-up tasks; it prints
the device, a table with the ratio of each time to the cheapest peer, the share of CPU time
stolen by other guests of the host meanwhile (Linux only), and one JSON line.
``--save`` writes the record into ``data/results/test_time_cost.json`` under the device
kind (``cpu`` or ``cuda``), which ``notebooks/09_comparison.ipynb`` reads.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from collections.abc import Callable

import torch
from torch.func import functional_call

from metalib import checkpoints, compare, evaluation, files, pretrained, recipes, runtime
from metalib.algorithms import lstm_meta, maml, transfer
from metalib.data import omniglot
from metalib.evaluation import held_out_tasks
from metalib.recipes.sinusoid import Learner


def milliseconds(run: Callable[[int], object], device: torch.device, tasks: int) -> float:
    """Mean wall time of ``run(i)`` over ``tasks`` tasks, after two warm-up calls."""
    run(0), run(1)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for i in range(tasks):
        run(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / tasks


def omniglot_scorer(name: str, device: torch.device) -> Callable | None:
    """``scores(x_support, y_support, x_query)`` for one episode, as the method tests."""
    recipe = checkpoints.read_sidecar(pretrained.path_of(name))["recipe"]
    if recipe == "transfer-omniglot":
        run = recipes.load(name, device=device)
        config, model = run.config, run.model

        def fit_and_score(x_support, y_support, x_query):
            logits = transfer.fine_tune_head(
                model.embedding,
                x_support[None],
                y_support[None],
                x_query[None],
                int(y_support.max()) + 1,
                steps=config.head_steps,
                lr=config.head_lr,
            )
            return logits[0]

        return fit_and_score
    if recipe == "mann-omniglot":
        return None  # reads sequences, not support and query sets: not comparable here
    return pretrained.load(name, device=device).scores


def sinusoid_predictor(name: str, device: torch.device) -> Callable:
    """``predict(task)`` for one sinusoid task: adapt for 10 steps (of its learned rule for
    the LSTM meta-learner), or read the context."""
    model = pretrained.load(name, device=device)
    if isinstance(model, Learner) and model.rule is not None:

        def rule_and_predict(task):
            adapted = lstm_meta.adapt(
                model.model,
                model.params,
                model.rule,
                task.x_support[0],
                task.y_support[0],
                inner_steps=10,
            )
            with torch.no_grad():
                return functional_call(model.model, adapted, (task.x_query[0],))

        return rule_and_predict
    if isinstance(model, Learner):

        def adapt_and_predict(task):
            adapted = maml.adapt(
                model.model,
                model.params,
                task.x_support[0],
                task.y_support[0],
                inner_lr=model.inner_lr,
                inner_steps=10,
                adapt_only=model.adapt_only,
            )
            with torch.no_grad():
                return functional_call(model.model, adapted, (task.x_query[0],))

        return adapt_and_predict

    def read_context(task):
        with torch.no_grad():
            return model(task.x_support, task.y_support, task.x_query)

    return read_context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--tasks", type=int, default=30, help="timed tasks per method")
    parser.add_argument("--save", action="store_true", help="write data/results/...json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = runtime.device(args.device)
    print(f"device: {runtime.describe_device(device)} · torch {torch.__version__}")
    sampler = evaluation.evaluation_sampler(omniglot.load(download=False), device=device)
    generator = evaluation.test_generator()
    episodes = [sampler.sample(1, generator=generator) for _ in range(args.tasks)]
    before = runtime.cpu_times()
    record: dict = {
        "device": runtime.describe_device(device),
        "threads": torch.get_num_threads(),
        "tasks": args.tasks,
        "omniglot": {},
        "sinusoid": {},
        "command": shlex.join(["python", "benchmarks/test_time_cost.py", *sys.argv[1:]]),
    }
    for entry in compare.omniglot_entries():
        scores = omniglot_scorer(entry.checkpoint, device)
        if scores is None:
            continue

        def one_episode(i, scores=scores):
            e = episodes[i]
            return scores(e.x_support[0], e.y_support[0], e.x_query[0])

        ms = milliseconds(one_episode, device, args.tasks)
        record["omniglot"][entry.checkpoint] = {"method": entry.method, "ms_per_task": ms}
    tasks = [held_out_tasks(args.tasks, k_shot=5).task(i).to(device) for i in range(args.tasks)]
    for entry in compare.sinusoid_entries():
        predict = sinusoid_predictor(entry.checkpoint, device)
        ms = milliseconds(lambda i, predict=predict: predict(tasks[i]), device, args.tasks)
        record["sinusoid"][entry.checkpoint] = {"method": entry.method, "ms_per_task": ms}
    steal = runtime.steal_share(before, runtime.cpu_times())
    record["cpu_steal_share"] = None if steal is None else round(steal, 4)
    for kind, rows in (("Omniglot 5-way 1-shot", "omniglot"), ("sinusoid K = 5", "sinusoid")):
        cheapest = min(r["ms_per_task"] for r in record[rows].values())
        print(f"\n{kind}: ms per task, and ratio to the cheapest")
        for name, r in sorted(record[rows].items(), key=lambda kv: kv[1]["ms_per_task"]):
            r["ratio_to_cheapest"] = r["ms_per_task"] / cheapest
            print(f"  {name:32s} {r['ms_per_task']:9.2f} ms  {r['ratio_to_cheapest']:7.1f}x")
    if steal is not None:
        print(f"\nCPU time stolen by other guests of the host meanwhile: {100 * steal:.1f}%")
    print(json.dumps(record))
    if args.save:
        path = compare.results_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        saved = json.loads(path.read_text()) if path.is_file() else {}
        saved[device.type] = record
        files.atomic_write(path, (json.dumps(saved, indent=2, sort_keys=True) + "\n").encode())
        print(f"saved under {device.type!r} in {path}")


if __name__ == "__main__":
    main()
