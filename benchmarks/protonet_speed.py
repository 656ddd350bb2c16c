"""Benchmark: Prototypical Networks on Omniglot, training throughput and time to a target.

Run from the repository root with the archives in the data directory (``make benchmark``)::

    METALIB_DATA=path/to/omniglot python benchmarks/protonet_speed.py [--device cuda]
        [--to-target 0.988 --eval-every 500 --max-minutes 30]

1. Training episodes per second of the paper's 60-way 1-shot recipe (5 queries per
   class, Adam), with the course's channels-last embedding and with the same network in
   PyTorch's default (contiguous) layout, in the same run, and their ratio.
2. With ``--to-target``: trains the recipe of
   :class:`~metalib.recipes.metric_omniglot.MetricConfig` until the 5-way 1-shot accuracy
   over ``--eval-episodes`` test episodes reaches the target (the paper's 98.8%),
   evaluating every ``--eval-every`` episodes, or until ``--max-minutes`` of training. It
   prints training time without and with evaluation. The course's targets: under 3 minutes
   on one H100-class GPU; on 2 CPU cores, 98% within 30 minutes.

It prints the device, a table and one JSON line with every number.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch

from metalib import evaluation, runtime
from metalib.data import episodes, omniglot, splits
from metalib.models import ConvEmbedding
from metalib.recipes import metric_omniglot
from metalib.recipes.metric_omniglot import MetricConfig


def episodes_per_second(model, config, sampler, device, *, seconds: float) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=config.outer_lr)
    generator = torch.Generator().manual_seed(0)  # indices on the CPU, as in training

    def step():
        loss = metric_omniglot.episode_loss(model, config, sampler.sample(1, generator=generator))
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
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


class ContiguousEmbedding(ConvEmbedding):
    """The course's embedding in PyTorch's default memory layout: the peer for the ratio."""

    def __init__(self) -> None:
        super().__init__()
        self.features.to(memory_format=torch.contiguous_format)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x.reshape(-1, *x.shape[-3:]).contiguous())  # (n, 64, 1, 1)
        return out.reshape(*x.shape[:-3], -1)


def time_to_target(data, config, device, *, target, eval_every, eval_episodes, max_minutes):
    """Train ``config`` and evaluate every ``eval_every`` episodes until ``target``."""
    test = evaluation.evaluation_sampler(data, n_way=5, k_shot=1, device=device)
    torch.manual_seed(config.seed)
    model = config.model().to(device)
    reached: dict = {}
    start, evaluating = time.perf_counter(), [0.0]

    def check(step, loss):
        training = time.perf_counter() - start - evaluating[0]
        out_of_time = training > 60 * max_minutes
        if (step + 1) % eval_every and not out_of_time:
            return False
        before = time.perf_counter()
        score = metric_omniglot.score_of(model, config, test, n_episodes=eval_episodes)
        model.train()
        evaluating[0] += time.perf_counter() - before
        print(
            f"  episode {step + 1}: 5-way 1-shot {score.mean:.4f} ± {score.ci95:.4f} after "
            f"{training:.0f} s of training",
            flush=True,
        )
        reached.update(
            episodes=step + 1,
            accuracy=round(score.mean, 4),
            ci95=round(score.ci95, 4),
            training_seconds=round(training, 1),
            seconds_with_evaluation=round(time.perf_counter() - start, 1),
            reached=score.mean >= target,
        )
        return score.mean >= target or out_of_time

    metric_omniglot.train(
        config, data=data, device=device, callback=check, model=model, progress=False
    )
    return reached


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--seconds", type=float, default=15.0, help="time per measurement")
    parser.add_argument("--to-target", type=float, default=None, help="train until this accuracy")
    parser.add_argument("--eval-every", type=int, default=500, help="episodes between checks")
    parser.add_argument("--eval-episodes", type=int, default=1000, help="test episodes per check")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="training time budget")
    parser.add_argument("--max-steps", type=int, default=MetricConfig().meta_steps)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = runtime.device(args.device)
    print(f"device: {runtime.describe_device(device)} · torch {torch.__version__}")
    data = omniglot.load(download=False)
    config = MetricConfig(meta_steps=args.max_steps)
    train = episodes.EpisodeSampler(
        data,
        splits.class_split(data, scheme=config.scheme, split="train"),
        n_way=config.train_way,
        k_shot=config.k_shot,
        k_query=config.k_query,
        device=device,
    )
    torch.manual_seed(0)
    model = config.model().to(device)
    rates = {
        "channels_last": episodes_per_second(model, config, train, device, seconds=args.seconds),
        "contiguous": episodes_per_second(
            ContiguousEmbedding().to(device), config, train, device, seconds=args.seconds
        ),
    }
    results: dict = {
        "device": runtime.describe_device(device),
        "threads": args.threads,
        "setting": f"{config.train_way}-way {config.k_shot}-shot, {config.k_query} queries",
        **{f"{k}_episodes_per_s": round(v, 2) for k, v in rates.items()},
        "channels_last_over_contiguous": round(rates["channels_last"] / rates["contiguous"], 2),
    }
    print(f"\n{'layout':<16}{'episodes/s':>12}")
    for name, rate in rates.items():
        print(f"{name:<16}{rate:>12.2f}")
    print(f"ratio channels-last / contiguous: {results['channels_last_over_contiguous']:.2f}×")
    if args.to_target is not None:
        reached = time_to_target(
            data,
            dataclasses.replace(config, meta_steps=args.max_steps),
            device,
            target=args.to_target,
            eval_every=args.eval_every,
            eval_episodes=args.eval_episodes,
            max_minutes=args.max_minutes,
        )
        results["time_to_target"] = {"target": args.to_target, **reached}
        verdict = "reached" if reached.get("reached") else "NOT reached"
        print(f"target {args.to_target:.3f} {verdict}: {reached}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
