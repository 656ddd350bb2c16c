"""Benchmark: MAML on Omniglot, meta-training throughput and (optionally) time to a target.

Run from the repository root with the archives in the data directory (``make benchmark``)::

    METALIB_DATA=path/to/omniglot python benchmarks/omniglot_maml_speed.py [--device cuda]
        [--to-target 0.987 --eval-every 500]

1. Tasks per second of 5-way 1-shot meta-training (the paper's setting: 32 tasks per
   outer step, 15 queries per class, one inner step at 0.4, Adam), second- and
   first-order, with ``maml.meta_loss`` (``vmap`` over tasks) and ``maml.meta_loss_loop``
   (one task at a time) in the same run; the sampler lives on the same device.
2. With ``--to-target``: trains second-order MAML until the 3-step accuracy on 600
   vinyals test episodes reaches the target (the paper's 98.7%), evaluating every
   ``--eval-every`` steps, and prints the wall time. The course's target on one H100-class
   GPU is under 10 minutes.

It prints the device, a table and one JSON line with every number.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from metalib import evaluation, runtime
from metalib.algorithms import maml
from metalib.data import omniglot
from metalib.models import ConvNet, clone_parameters, parameters_of
from metalib.recipes import maml_omniglot
from metalib.recipes.maml_omniglot import OmniglotConfig


def tasks_per_second(meta_loss_fn, sampler, config, device, *, seconds, first_order):
    torch.manual_seed(0)
    model = ConvNet(config.n_way).to(device)
    params = clone_parameters(parameters_of(model))
    optimizer = torch.optim.Adam(params.values(), lr=config.outer_lr)
    generator = torch.Generator().manual_seed(0)  # indices on the CPU, as in training

    def step():
        batch = sampler.sample(config.meta_batch_size, generator=generator)
        loss = meta_loss_fn(
            model,
            params,
            batch,
            loss_fn=F.cross_entropy,
            inner_lr=config.inner_lr,
            first_order=first_order,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        step()
        steps += 1
        if device.type == "cuda" and steps % 10 == 0:
            torch.cuda.synchronize()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.meta_batch_size / (time.perf_counter() - start)


def time_to_target(data, config, device, *, target, eval_every, max_steps):
    """Train second-order MAML, evaluating every ``eval_every`` steps, until ``target``."""
    sampler = maml_omniglot.sampler_for(
        data, config, split="test", k_query=evaluation.TEST_K_QUERY, device=device
    )
    torch.manual_seed(config.seed)
    model = ConvNet(config.n_way).to(device)
    params = clone_parameters(parameters_of(model))  # updated in place by training
    reached: dict = {}
    start, evaluating = time.perf_counter(), [0.0]

    def check(step, loss):
        if (step + 1) % eval_every:
            return False
        before = time.perf_counter()
        curve = maml_omniglot.accuracy_by_step(
            model, params, sampler, max_steps=config.test_inner_steps
        )
        evaluating[0] += time.perf_counter() - before
        accuracy = curve.mean[config.test_inner_steps]
        training = time.perf_counter() - start - evaluating[0]
        print(
            f"  step {step + 1}: accuracy {accuracy:.4f} after {training:.0f} s of training",
            flush=True,
        )
        if accuracy >= target:
            reached.update(
                step=step + 1,
                accuracy=round(accuracy, 4),
                training_seconds=round(training, 1),
                seconds_with_evaluation=round(time.perf_counter() - start, 1),
            )
            return True
        return False

    maml_omniglot.train(
        OmniglotConfig.paper(5, 1, meta_steps=max_steps),
        data=data,
        device=device,
        callback=check,
        params=params,
    )
    return reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    parser.add_argument("--to-target", type=float, default=None, help="train until this accuracy")
    parser.add_argument("--eval-every", type=int, default=500)
    parser.add_argument("--max-steps", type=int, default=60_000)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = runtime.device(args.device)
    print(f"device: {runtime.describe_device(device)} · torch {torch.__version__}")
    data = omniglot.load(download=False)
    config = OmniglotConfig.paper(5, 1)
    sampler = maml_omniglot.sampler_for(data, config, split="train", device=device)
    results: dict = {"device": runtime.describe_device(device), "threads": args.threads}
    print(f"\n{'order':<14}{'vmap tasks/s':>14}{'loop tasks/s':>14}{'ratio':>8}")
    for first_order in (False, True):
        rates = [
            tasks_per_second(
                fn, sampler, config, device, seconds=args.seconds, first_order=first_order
            )
            for fn in (maml.meta_loss, maml.meta_loss_loop)
        ]
        name = "first-order" if first_order else "second-order"
        print(f"{name:<14}{rates[0]:>14.1f}{rates[1]:>14.1f}{rates[0] / rates[1]:>7.1f}×")
        results[name] = {
            "vmap_tasks_per_s": round(rates[0], 2),
            "loop_tasks_per_s": round(rates[1], 2),
        }
    if args.to_target is not None:
        reached = time_to_target(
            data,
            config,
            device,
            target=args.to_target,
            eval_every=args.eval_every,
            max_steps=args.max_steps,
        )
        results["time_to_target"] = reached or f"not reached in {args.max_steps} steps"
        print(f"time to {args.to_target:.3f}: {results['time_to_target']}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
