"""Benchmark: outer steps per second of MAML, FOMAML and Reptile, metalib against peers.

Run from the repository root after ``pip install -e ".[bench]"`` (``make benchmark``)::

    python benchmarks/meta_step_speed.py [--device cpu] [--threads 2] [--seconds 5]

The sinusoid setting of MAML (1-40-40-1 MLP, meta-batch 25, K = 10 support and 10 query
points), with 1 and 5 inner steps of plain gradient descent (α = 0.01), and one Adam
outer step. Four implementations of the same update on the same network and data:

- ``metalib vmap``: :func:`metalib.algorithms.maml.meta_loss` (tasks vectorised);
- ``metalib loop``: :func:`metalib.algorithms.maml.meta_loss_loop` (one task at a time);
- ``higher``: ``higher.innerloop_ctx`` with a differentiable SGD, one task at a time;
- ``torchopt``: ``torchopt.FuncOptimizer(torchopt.sgd(α))``, one task at a time.

Before timing, every peer's meta-gradient is checked against metalib's on the same data
(equal work). Then each configuration runs for ``--seconds``. Peak memory: every
implementation, method and step count runs once in a fresh subprocess at a meta-batch of
1,000 tasks, and the growth of the process's peak resident memory (on a GPU, of
``torch.cuda.max_memory_allocated``) over that one outer step is reported. It
prints a table, the ratios of metalib's vmap path to each peer, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call

from metalib import runtime
from metalib.algorithms import maml, reptile
from metalib.models import SinusoidMLP, clone_parameters, parameters_of
from metalib.tasks import SinusoidTasks, TaskBatch

ALPHA, META_BATCH, K = 0.01, 25, 10
MEMORY_TASKS = 1000  # at 25 tasks the growth is below what resident memory resolves
Grads = dict[str, torch.Tensor]


# --- the four implementations: each returns the meta-gradient (a dict) for one batch -----
def metalib_vmap(model, params, tasks, method, steps) -> Grads:
    if method == "reptile":
        return reptile.direction(model, params, tasks, inner_lr=ALPHA, inner_steps=steps)
    loss = maml.meta_loss(
        model, params, tasks, inner_lr=ALPHA, inner_steps=steps, first_order=method == "fomaml"
    )
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def metalib_loop(model, params, tasks, method, steps) -> Grads:
    if method == "reptile":
        x, y = _all_points(tasks)
        frozen = {n: p.detach() for n, p in params.items()}
        adapted = [
            maml.adapt(
                model, frozen, x[i], y[i], inner_lr=ALPHA, inner_steps=steps, first_order=True
            )
            for i in range(len(tasks))
        ]
        return {n: frozen[n] - torch.stack([a[n] for a in adapted]).mean(0) for n in params}
    loss = maml.meta_loss_loop(
        model, params, tasks, inner_lr=ALPHA, inner_steps=steps, first_order=method == "fomaml"
    )
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()))))


def with_higher(model, params, tasks, method, steps) -> Grads:
    import higher

    theta = dict(model.named_parameters())  # higher differentiates the module's own weights
    names = list(theta)
    totals = {n: torch.zeros_like(p) for n, p in theta.items()}
    inner = torch.optim.SGD(model.parameters(), lr=ALPHA)
    x_all, y_all = _all_points(tasks)
    for i in range(len(tasks)):
        track = method == "maml"
        with higher.innerloop_ctx(
            model, inner, copy_initial_weights=False, track_higher_grads=track
        ) as (fmodel, diffopt):
            xs, ys = (
                (x_all[i], y_all[i])
                if method == "reptile"
                else (tasks.x_support[i], tasks.y_support[i])
            )
            for _ in range(steps):
                diffopt.step(F.mse_loss(fmodel(xs), ys))
            if method == "reptile":
                for n, fast in zip(names, fmodel.parameters()):
                    totals[n] += (theta[n].detach() - fast.detach()) / len(tasks)
                continue
            query = F.mse_loss(fmodel(tasks.x_query[i]), tasks.y_query[i]) / len(tasks)
            if track:
                grads = torch.autograd.grad(query, list(theta.values()))
            else:  # first order: the gradient at the adapted weights, applied to θ
                grads = torch.autograd.grad(query, list(fmodel.parameters()))
            for n, g in zip(names, grads):
                totals[n] += g
    return totals


def with_torchopt(model, params, tasks, method, steps) -> Grads:
    import torchopt

    names = list(params)
    totals = {n: torch.zeros_like(p) for n, p in params.items()}
    x_all, y_all = _all_points(tasks)
    for i in range(len(tasks)):
        optimizer = torchopt.FuncOptimizer(torchopt.sgd(lr=ALPHA))
        fast = tuple(params.values())
        if method != "maml":
            fast = tuple(p.detach().requires_grad_() for p in fast)
        xs, ys = (
            (x_all[i], y_all[i])
            if method == "reptile"
            else (tasks.x_support[i], tasks.y_support[i])
        )
        for _ in range(steps):
            loss = F.mse_loss(functional_call(model, dict(zip(names, fast)), (xs,)), ys)
            fast = optimizer.step(loss, fast)
            if method != "maml":
                fast = tuple(p.detach().requires_grad_() for p in fast)
        if method == "reptile":
            for n, p in zip(names, fast):
                totals[n] += (params[n].detach() - p.detach()) / len(tasks)
            continue
        query = F.mse_loss(
            functional_call(model, dict(zip(names, fast)), (tasks.x_query[i],)), tasks.y_query[i]
        ) / len(tasks)
        wrt = list(params.values()) if method == "maml" else list(fast)
        for n, g in zip(names, torch.autograd.grad(query, wrt)):
            totals[n] += g
    return totals


IMPLEMENTATIONS: dict[str, Callable[..., Grads]] = {
    "metalib vmap": metalib_vmap,
    "metalib loop": metalib_loop,
    "higher": with_higher,
    "torchopt": with_torchopt,
}


def _all_points(tasks: TaskBatch) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.cat([tasks.x_support, tasks.x_query], 1),
        torch.cat([tasks.y_support, tasks.y_query], 1),
    )


def sample(generator: torch.Generator, device: torch.device, n: int = META_BATCH) -> TaskBatch:
    return SinusoidTasks().sample(n, k_shot=K, k_query=K, generator=generator, device=device)


def check_equal_work(device: torch.device) -> None:
    torch.manual_seed(0)
    model = SinusoidMLP().to(device)
    tasks = sample(torch.Generator().manual_seed(1), device)
    for method in ("maml", "fomaml", "reptile"):
        for steps in (1, 5):
            reference = metalib_vmap(
                model, clone_parameters(parameters_of(model)), tasks, method, steps
            )
            for name, fn in IMPLEMENTATIONS.items():
                got = fn(model, clone_parameters(parameters_of(model)), tasks, method, steps)
                for key in reference:
                    torch.testing.assert_close(
                        got[key],
                        reference[key],
                        rtol=1e-3,
                        atol=1e-5,
                        msg=f"{name} {method} {steps} steps: {key}",
                    )


def steps_per_second(fn, method: str, steps: int, device: torch.device, seconds: float) -> float:
    torch.manual_seed(0)
    model = SinusoidMLP().to(device)
    params = parameters_of(model)
    optimizer = torch.optim.Adam(params.values(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)

    def outer_step() -> None:
        grads = fn(model, params, sample(generator, device), method, steps)
        for name, p in params.items():
            p.grad = grads[name].detach()
        optimizer.step()

    outer_step()  # warm-up
    _sync(device)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or count < 3:
        outer_step()
        count += 1
    _sync(device)
    return count / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


SLUGS = {"vmap": "metalib vmap", "loop": "metalib loop", "higher": "higher", "torchopt": "torchopt"}


def memory_probe(slug: str, method: str, steps: int, device_name: str) -> None:
    """Child process: print the growth of peak memory over one outer step (in MB)."""
    fn = IMPLEMENTATIONS[SLUGS[slug]]
    device = runtime.device(device_name)
    model = SinusoidMLP().to(device)
    tasks = sample(torch.Generator().manual_seed(0), device, n=MEMORY_TASKS)
    params = parameters_of(model)
    fn(model, params, sample(torch.Generator(), device, n=2), method, 1)  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(model, params, tasks, method, steps)
    if device.type == "cuda":
        print(json.dumps({"peak_mb": (torch.cuda.max_memory_allocated() - base) / 2**20}))
    else:
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_rss
        print(json.dumps({"peak_mb": grown / 1024}))


def measure_memory(device: torch.device) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for method in ("maml", "fomaml", "reptile"):
        for steps in (1, 5, 10):
            row = {}
            for slug, name in SLUGS.items():
                command = [
                    sys.executable,
                    __file__,
                    "--memory-probe",
                    slug,
                    method,
                    str(steps),
                    "--device",
                    device.type,
                ]
                child = subprocess.run(command, capture_output=True, text=True, check=True)
                row[name] = round(json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"], 1)
            out[f"{method} {steps}"] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="default: automatic (cuda, mps, cpu)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (default: 2)")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="time spent on each configuration (default: 5)"
    )
    parser.add_argument("--skip-memory", action="store_true", help="only measure speed")
    parser.add_argument(
        "--memory-probe", nargs=3, metavar=("IMPL", "METHOD", "STEPS"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_probe:
        slug, method, steps = args.memory_probe
        memory_probe(slug, method, int(steps), args.device or "cpu")
        return
    device = runtime.device(args.device)
    print(f"device: {runtime.describe_device(device)} · torch {torch.__version__}")
    print(f"setting: 1-40-40-1 MLP, meta-batch {META_BATCH}, K={K}, α={ALPHA}, Adam outer step")
    check_equal_work(device)
    print("meta-gradients of all four implementations agree (rtol 1e-3) for every row below\n")

    rates: dict[str, dict[str, float]] = {}
    header = f"{'method':8s}{'steps':>6s}" + "".join(f"{n:>15s}" for n in IMPLEMENTATIONS)
    print(header + f"{'vs higher':>11s}{'vs torchopt':>13s}{'vs loop':>9s}")
    for method in ("maml", "fomaml", "reptile"):
        for steps in (1, 5):
            row = {
                name: steps_per_second(fn, method, steps, device, args.seconds)
                for name, fn in IMPLEMENTATIONS.items()
            }
            rates[f"{method} {steps}"] = {k: round(v, 1) for k, v in row.items()}
            vmap = row["metalib vmap"]
            print(
                f"{method:8s}{steps:>6d}"
                + "".join(f"{v:>15.1f}" for v in row.values())
                + f"{vmap / row['higher']:>10.1f}×{vmap / row['torchopt']:>12.1f}×"
                + f"{vmap / row['metalib loop']:>8.1f}×"
            )
    print("(outer steps per second; ratios are metalib vmap over each peer)")

    memory = {}
    if not args.skip_memory:
        memory = measure_memory(device)
        print(f"\npeak memory growth of one outer step, meta-batch {MEMORY_TASKS} (MB):")
        print(f"{'method':8s}{'steps':>6s}" + "".join(f"{n:>15s}" for n in IMPLEMENTATIONS))
        for key, row in memory.items():
            method, steps = key.split()
            print(f"{method:8s}{steps:>6s}" + "".join(f"{v:>15.1f}" for v in row.values()))
    print(
        json.dumps(
            {
                "device": runtime.describe_device(device),
                "threads": args.threads,
                "steps_per_s": rates,
                "peak_memory_mb": memory,
            }
        )
    )


if __name__ == "__main__":
    main()
