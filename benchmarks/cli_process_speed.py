"""Benchmark: the whole ``python -m metalib train sinusoid-maml`` process against ``higher``.

Run from the repository root after ``pip install -e ".[bench]"`` (``make benchmark``)::

    python benchmarks/cli_process_speed.py [--steps 1000] [--threads 2]

MAML's sinusoid setting at the paper's meta-batch (Finn et al. 2017, section 5.1: 25 tasks
per outer step, K = 10, one inner step of 0.01, Adam at 0.001), for ``--steps`` outer
steps, as two whole processes timed from start to exit:

- **metalib**: ``python -m metalib train sinusoid-maml --meta-batch-size 25 --outer-lr
  0.001 --inner-steps 1 --meta-steps N --out TMP --no-progress`` (the paper's one inner
  step; the shipped recipe takes two): start-up and imports, training, the test
  evaluation its sidecar records (1,000 tasks after 0 to 10 steps) and writing the
  checkpoint;
- **higher**: this script as a child (``--higher-child``): start-up and imports, the same
  initial network and the same tasks, N outer steps with ``higher``'s differentiable SGD
  one task at a time (``meta_step_speed.with_higher``), and ``torch.save`` of the weights.
  It does less than metalib's command: no test evaluation.

Both processes get the same thread count. Equal work is checked first: 20 steps of each
must end with the same network (max |Δw| below 1e-5; over hundreds of Adam steps the two
drift apart by rounding, so the timed runs are not compared). It prints the two wall times,
their ratio (target: at least 10×) and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
META_BATCH, K, ALPHA, BETA = 25, 10, 0.01, 1e-3


def higher_child(steps: int, out: str) -> None:
    """The ``higher`` process: train like ``sinusoid-maml`` at seed 0, save the weights."""
    sys.path.insert(0, str(HERE))
    from meta_step_speed import with_higher

    from metalib.models import SinusoidMLP, parameters_of
    from metalib.tasks import SinusoidTasks

    torch.manual_seed(0)  # as the recipe's build(config) with seed 0
    model = SinusoidMLP()
    params = parameters_of(model)
    optimizer = torch.optim.Adam(params.values(), lr=BETA)
    generator = torch.Generator().manual_seed(0)
    family = SinusoidTasks()
    for _ in range(steps):
        tasks = family.sample(META_BATCH, k_shot=K, k_query=K, generator=generator)
        grads = with_higher(model, params, tasks, "maml", 1)
        for name, p in params.items():
            p.grad = grads[name].detach()
        optimizer.step()
    torch.save(model.state_dict(), out)


def timed(command: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(HERE.parent)}
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="outer steps (default: 1000)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument("--higher-child", nargs=2, metavar=("STEPS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.higher_child:
        torch.set_num_threads(args.threads)
        higher_child(int(args.higher_child[0]), args.higher_child[1])
        return
    from metalib.recipes import load

    def both(steps: int, tmp: str) -> tuple[dict[str, float], float]:
        ours = [
            sys.executable, "-m", "metalib", "train", "sinusoid-maml",
            "--meta-batch-size", str(META_BATCH), "--outer-lr", str(BETA), "--inner-steps", "1",
            "--meta-steps", str(steps), "--out", f"{tmp}/metalib", "--no-progress",
        ]  # fmt: skip
        peer = [
            sys.executable, __file__, "--threads", str(args.threads),
            "--higher-child", str(steps), f"{tmp}/higher.pt",
        ]  # fmt: skip
        seconds = {"metalib": timed(ours, args.threads), "higher": timed(peer, args.threads)}
        trained = load(f"{tmp}/metalib.pt", device="cpu").model.state_dict()
        theirs = torch.load(f"{tmp}/higher.pt")
        return seconds, max((trained[k] - theirs[k]).abs().max().item() for k in theirs)

    with tempfile.TemporaryDirectory() as tmp:
        _, gap = both(20, tmp)
        assert gap < 1e-5, f"20 steps trained different networks (max |Δw| = {gap:.2e})"
        seconds, _ = both(args.steps, tmp)
    ratio = seconds["higher"] / seconds["metalib"]
    print(f"{args.steps} outer steps of MAML, 25 tasks each, {args.threads} threads")
    print(f"metalib command (with its test evaluation): {seconds['metalib']:8.1f} s")
    print(f"higher, the same training:                  {seconds['higher']:8.1f} s")
    print(f"ratio: {ratio:.1f}× (target ≥ 10×); after 20 steps the networks agree to {gap:.1e}")
    print(
        json.dumps(
            {
                "steps": args.steps,
                "threads": args.threads,
                "seconds": {k: round(v, 2) for k, v in seconds.items()},
                "ratio": round(ratio, 2),
                "max_weight_gap_20_steps": gap,
            }
        )
    )


if __name__ == "__main__":
    main()
