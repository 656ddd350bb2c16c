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
(equal work). Then each configuration runs for ``--seconds``.

Peak memory: every implementation, method and step count computes one meta-gradient of
100 tasks in a fresh subprocess, after a warm-up, and :func:`peak_allocated_mb` reports the
most memory PyTorch held at once for it above what was held before (every allocation
counts, each peer's included): on a GPU, the caching allocator's own statistics; on a CPU,
the profiler's record of each allocation and free, summed in time order. Resident memory
is not used: it cannot see a few hundred kilobytes freed and reused inside the process.
:func:`check_memory_measure` first checks the measure on cases whose memory is known
(``tests/test_benchmarks.py`` too). The script prints a table, the ratios of metalib's vmap
path to each peer, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile

from metalib import runtime
from metalib.algorithms import maml, reptile
from metalib.models import SinusoidMLP, clone_parameters, parameters_of
from metalib.tasks import SinusoidTasks, TaskBatch

ALPHA, META_BATCH, K = 0.01, 25, 10
MEMORY_TASKS = 100  # the profiler records every operation: 1,000 tasks of a peer take minutes
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


def peak_allocated_mb(fn: Callable[[], object], device: torch.device) -> float:
    """The most memory PyTorch holds at once while ``fn()`` runs, above what it held before.

    On a GPU, the caching allocator's peak (``torch.cuda.max_memory_allocated``). On a
    CPU, every allocation and free the profiler records (``profile_memory=True``: an
    operation's own allocations, and frees as ``[memory]`` events), summed in time order.
    Tensors freed inside ``fn`` that existed before it make the sum dip below zero; the
    peak is then still measured from the starting level, never below 0.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as recorded:
        fn()
    held = peak = 0
    for event in sorted(recorded.events(), key=lambda e: e.time_range.start):
        is_free = event.name == "[memory]"
        held += event.cpu_memory_usage if is_free else event.self_cpu_memory_usage
        peak = max(peak, held)
    return peak / 2**20


def check_memory_measure(device: torch.device) -> None:
    """The measure on three cases whose peak is known, to the byte."""
    mb = 2**18  # float32 elements in one MB

    def overlap() -> object:  # 8 MB, then 8 more while the first lives, then 8 replacing it
        a = torch.ones(8 * mb, device=device)
        b = a * 2
        del a
        return (b + 1).sum()

    def held_list() -> object:  # 40 tensors of 1 MB, all alive at the end
        return [torch.ones(mb, device=device) for _ in range(40)]

    def reused() -> object:  # 1 MB allocated 50 times; at most two alive at once
        for _ in range(50):
            x = torch.ones(mb, device=device)
        return x

    for fn, expected in ((overlap, 16), (held_list, 40), (reused, 2)):
        got = peak_allocated_mb(fn, device)
        assert abs(got - expected) < 0.01, f"{fn.__name__}: measured {got:.3f} MB, not {expected}"


def memory_probe(slug: str, method: str, steps: int, device_name: str) -> None:
    """Child process: print the peak memory of one meta-gradient of MEMORY_TASKS tasks (MB)."""
    fn = IMPLEMENTATIONS[SLUGS[slug]]
    device = runtime.device(device_name)
    model = SinusoidMLP().to(device)
    tasks = sample(torch.Generator().manual_seed(0), device, n=MEMORY_TASKS)
    params = parameters_of(model)
    fn(model, params, sample(torch.Generator(), device, n=2), method, 1)  # warm-up
    peak = peak_allocated_mb(lambda: fn(model, params, tasks, method, steps), device)
    print(json.dumps({"peak_mb": peak}))


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
                row[name] = round(json.loads(child.stdout.strip().splitlines()[-1])["peak_mb"], 2)
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
        check_memory_measure(device)
        memory = measure_memory(device)
        print(f"\npeak memory of one meta-gradient of {MEMORY_TASKS} tasks (MB; the measure")
        print("reproduced three known cases to 0.01 MB first):")
        print(f"{'method':8s}{'steps':>6s}" + "".join(f"{n:>15s}" for n in IMPLEMENTATIONS))
        for key, row in memory.items():
            method, steps = key.split()
            print(f"{method:8s}{steps:>6s}" + "".join(f"{v:>15.2f}" for v in row.values()))
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
