"""Every paper-budget Omniglot checkpoint on one GPU, resumably, inside a deadline.

``python -m metalib full-budget --out data/full_budget --deadline 540 --pack DEST`` checks
the GPU (the CUDA tests, and one training step of every recipe against the same step on
the CPU), then trains the jobs of :data:`JOBS` as concurrent ``train`` processes, cheap
ones first. At the deadline each run stops at a step boundary and keeps its resume state;
the same command later continues every stopped run and skips the finished ones. ``--pack``
puts what there is to bring back (checkpoints with sidecars, resume states, logs, and a
summary with the steps done, steps per second and wall time of each job) into at most 8
files; ``--unpack`` puts them back. ``--smoke`` runs the same scheduler, packing and
resume on a CPU with tiny budgets in about a minute (CI does, in ``tests/test_full_budget.py``).
The procedure for a GPU session is ``docs/gpu.md``. This module and everything it starts
import only what the GPU machine has (torch, torchvision, numpy, pillow, matplotlib, tqdm,
pytest), so it runs from a checkout with ``PYTHONPATH=.``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from metalib import checkpoints, files, runtime
from metalib.data import omniglot
from metalib.recipes import RECIPES, base

MiB = 1024 * 1024
PART_LIMIT = 15 * MiB  # each packed file stays under the 16 MiB a file may have on the way back
TOTAL_LIMIT = 64 * MiB
MAX_PARTS = 7  # plus summary.json: 8 files


@dataclass(frozen=True)
class Job:
    """One checkpoint to train: ``train RECIPE FLAGS --out DIR/NAME``.

    Attributes:
        smoke: flags appended in ``--smoke`` mode (the last value of a flag wins), which
            shrink the run to seconds on a CPU.
    """

    name: str
    recipe: str
    flags: tuple[str, ...]
    smoke: tuple[str, ...] = ()


_CHEAP_VALIDATION = ("--validate-every", "200", "--validation-episodes", "4")
_METRIC_SMOKE = (
    *("--meta-steps", "600", "--train-way", "5", "--k-query", "2", "--episodes", "4"),
    *_CHEAP_VALIDATION,
)
_MAML_SMOKE = (
    *("--meta-steps", "250", "--meta-batch-size", "2", "--k-query", "2", "--episodes", "4"),
    *_CHEAP_VALIDATION,
)
# Cheap first: the metric family and the transfer baseline take minutes on a GPU, MAML hours.
JOBS = (
    Job(
        "protonet_omniglot_1shot",
        "protonet-omniglot",
        ("--k-shot", "1", "--meta-steps", "20000"),
        _METRIC_SMOKE,
    ),
    Job(  # chosen on 20-way 5-shot validation: at 5-way it sits at 99.7%, too near the ceiling
        "protonet_omniglot_5shot",
        "protonet-omniglot",
        ("--n-way", "20", "--k-shot", "5", "--meta-steps", "20000"),
    ),
    Job(
        "protonet_omniglot_lake_1shot",
        "protonet-omniglot",
        ("--k-shot", "1", "--split", "lake", "--meta-steps", "20000"),
    ),
    Job("matching_omniglot_1shot", "matching-omniglot", ("--k-shot", "1", "--meta-steps", "20000")),
    Job("siamese_omniglot_1shot", "siamese-omniglot", ("--k-shot", "1", "--meta-steps", "20000")),
    Job(
        "transfer_omniglot",
        "transfer-omniglot",
        ("--meta-steps", "5000"),
        (
            *("--meta-steps", "800", "--meta-batch-size", "16", "--head-steps", "3"),
            *("--episodes", "4", *_CHEAP_VALIDATION),
        ),
    ),
    Job("maml_omniglot_5w1s", "maml-omniglot", ("--n-way", "5", "--k-shot", "1"), _MAML_SMOKE),
    Job("fomaml_omniglot_5w1s", "fomaml-omniglot", ("--n-way", "5", "--k-shot", "1")),
    Job(  # the learned update rule of chapter 04 (no paper budget on Omniglot: MAML's third)
        "lstm_meta_omniglot_5w1s",
        "lstm-meta-omniglot",
        ("--n-way", "5", "--k-shot", "1", "--meta-steps", "20000"),
    ),
    Job("maml_omniglot_5w5s", "maml-omniglot", ("--n-way", "5", "--k-shot", "5")),
    Job("maml_omniglot_20w1s", "maml-omniglot", ("--n-way", "20", "--k-shot", "1")),
    Job("maml_omniglot_20w5s", "maml-omniglot", ("--n-way", "20", "--k-shot", "5")),
    Job("mann_omniglot_5way", "mann-omniglot", ("--n-way", "5", "--meta-steps", "10000")),
)
SMOKE_JOBS = tuple(job for job in JOBS if job.smoke)


def job_config(job: Job, *, smoke: bool = False):
    """The configuration ``job`` trains (with its ``--smoke`` flags, if asked)."""
    from metalib import cli  # cli imports this module

    flags = [*job.flags, *(job.smoke if smoke else ())]
    return cli.config_of(cli.build_parser().parse_args(["train", job.recipe, *flags, "--out", "-"]))


def state_of(job: Job, out: Path, *, smoke: bool = False) -> tuple[str, int, float]:
    """``("finished" | "stopped" | "pending", steps done, seconds trained)`` of ``job``.

    Finished: its checkpoint is in ``out``, or has landed in ``data/checkpoints`` with the
    job's configuration (a shipped checkpoint of the same name trained at another budget
    does not count). Stopped: ``out`` holds its resume state.
    """
    stem = out / job.name
    resume = base.resume_path_of(stem)
    if resume.is_file():
        loop = torch.load(resume, map_location="cpu", weights_only=True)["loop"]
        return "stopped", int(loop["step"]), float(loop["seconds"])
    landed = runtime.checkpoint_dir() / job.name
    wanted = job_config(job, smoke=smoke)
    defaults = type(wanted)().to_dict()  # settings added since a sidecar was written
    for where in (stem, landed):
        pt_path, json_path = checkpoints.paths(where)
        if pt_path.is_file() and json_path.is_file():
            sidecar = checkpoints.read_sidecar(where)
            if where == stem or {**defaults, **sidecar["config"]} == wanted.to_dict():
                steps, seconds = sidecar["metrics"]["steps"], sidecar["wall_time_s"]
                return "finished", int(steps), float(seconds)
    return "pending", 0, 0.0


def check_cuda_tests(timeout: float = 300) -> dict:
    """Run ``pytest -m cuda tests/test_cuda.py`` in a subprocess: its exit code and tail."""
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider"]
    command += ["tests/test_cuda.py"]
    done = subprocess.run(
        command, cwd=runtime.REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    return {"returncode": done.returncode, "tail": (done.stdout + done.stderr)[-1500:]}


def check_one_step(job: Job, device: torch.device, data, *, smoke: bool = False) -> dict:
    """Two training steps of ``job`` (at a meta-batch of at most 2) on the CPU and on ``device``.

    The same seed gives the same initial weights and batches on both (batches are drawn
    on the CPU), so the first loss must agree to float32 rounding and the second, after
    one step of Adam, closely. Returns the losses and whether they agree.
    """
    config = job_config(job, smoke=smoke)
    small = {"meta_steps": 2}
    if hasattr(config, "meta_batch_size"):
        small["meta_batch_size"] = min(config.meta_batch_size, 2)
    config = dataclasses.replace(config, **small)
    family = RECIPES[job.recipe]
    cpu, here = (
        family.train(config, data=data, device=where, progress=False).history.losses
        for where in (torch.device("cpu"), device)
    )
    first = abs(cpu[0] - here[0]) <= 1e-3 * max(1.0, abs(cpu[0]))
    second = abs(cpu[1] - here[1]) <= 2e-2 * max(1.0, abs(cpu[1]))
    return {"device": str(device), "cpu": cpu, "on_device": here, "agree": first and second}


def _child_command(job: Job, out: Path, device: str, seconds: float, smoke: bool) -> list[str]:
    command = [sys.executable, "-m", "metalib", "train", job.recipe, *job.flags]
    if smoke:
        command += list(job.smoke)
    command += ["--out", str(out / job.name), "--device", device, "--no-progress"]
    command += ["--save-every", "20" if smoke else "200", "--deadline", f"{seconds:.1f}"]
    return command


def schedule(
    jobs: tuple[Job, ...],
    out: Path,
    *,
    deadline: float,
    workers: int,
    device: str,
    smoke: bool = False,
) -> dict:
    """Train ``jobs`` in ``out`` as up to ``workers`` concurrent processes within ``deadline``
    seconds, and say what each did. Finished jobs are skipped; stopped ones continue from
    their resume state. Each process is told when to stop (``train --deadline``) and is
    sent SIGTERM if it has not by then; either way it saves its state at a step boundary."""
    start = time.monotonic()
    end = start + deadline - (2.0 if smoke else 30.0)  # the rest is for the summary and packing
    startup = 3.0 if smoke else 20.0  # a process's imports, data load and CUDA start
    (out / "logs").mkdir(parents=True, exist_ok=True)
    before = {job.name: state_of(job, out, smoke=smoke) for job in jobs}
    queue = [job for job in jobs if before[job.name][0] != "finished"]
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, workers))
    env = {**os.environ, "PYTHONPATH": str(runtime.REPO_ROOT), "OMP_NUM_THREADS": str(threads)}

    def launch(job: Job) -> tuple[subprocess.Popen, object, float]:
        command = _child_command(job, out, device, end - time.monotonic() - startup, smoke)
        log = open(out / "logs" / f"{job.name}.log", "a")  # noqa: SIM115 (closed when it ends)
        log.write(f"\n$ {' '.join(command)}\n")
        log.flush()
        _say(f"started {job.name}")
        process = subprocess.Popen(
            command, cwd=runtime.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return process, log, time.monotonic()

    running: dict[str, tuple[subprocess.Popen, object, float]] = {}
    ended: dict[str, dict] = {}
    told: set[str] = set()
    try:
        while queue or running:
            if queue and len(running) < workers and end - time.monotonic() > 2 * startup:
                job = queue.pop(0)
                running[job.name] = launch(job)
                continue
            if not running:
                break  # no time left to start what is queued: the next invocation will
            for name, (process, log, began) in list(running.items()):
                late = time.monotonic() - end
                if process.poll() is None and late > 5 and name not in told:
                    process.send_signal(signal.SIGTERM)  # once: it saves its state, then exits
                    told.add(name)
                elif process.poll() is None and late > 25:
                    process.kill()  # stuck: its last periodic state stands
                if process.poll() is not None:
                    log.close()
                    wall = time.monotonic() - began
                    ended[name] = {"returncode": process.returncode, "wall_s": wall}
                    _say(f"{name} ended with code {process.returncode} after {wall:.0f} s")
                    del running[name]
            time.sleep(0.1)
    finally:  # the scheduler itself was stopped (Ctrl-C, an error): every run saves and ends
        for process, log, _ in running.values():
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            log.close()
    summary = {}
    for job in jobs:
        state, steps, seconds = state_of(job, out, smoke=smoke)
        ran = ended.get(job.name, {})
        done, trained = steps - before[job.name][1], seconds - before[job.name][2]
        summary[job.name] = {
            "recipe": job.recipe,
            "state": state,
            "steps": steps,
            "steps_this_run": done,
            "training_s_this_run": round(trained, 1),
            "steps_per_s": round(done / trained, 2) if done > 0 and trained > 0 else None,
            "process_wall_s": None if ran.get("wall_s") is None else round(ran["wall_s"], 1),
            "returncode": ran.get("returncode"),
        }
    return summary


def _say(text: str) -> None:
    """One progress line on stderr (the summary is the JSON on stdout)."""
    print(f"full-budget: {text}", file=sys.stderr, flush=True)


def pack(out: Path, dest: Path) -> list[Path]:
    """Put the results in ``out`` into at most 8 files in ``dest``: ``summary.json`` and
    tar parts of under 15 MiB each (checkpoints first, then resume states, then logs).

    Raises:
        ValueError: if a single file is too large for a part, or everything over 64 MiB.
    """
    dest.mkdir(parents=True, exist_ok=True)
    finished = sorted(p for p in out.glob("*.pt") if not p.name.endswith(".resume.pt"))
    wanted = [p for pt in finished for p in (pt, pt.with_suffix(".json"))]
    wanted += sorted(out.glob("*.resume.pt")) + sorted((out / "logs").glob("*.log"))
    total = sum(p.stat().st_size for p in wanted)
    if total > TOTAL_LIMIT - MiB:
        raise ValueError(
            f"{total / MiB:.1f} MiB to pack is over the {TOTAL_LIMIT // MiB} MiB limit."
        )
    parts: list[list[Path]] = [[]]
    for path in wanted:
        size = path.stat().st_size
        if size > PART_LIMIT:
            raise ValueError(
                f"{path} is {size / MiB:.1f} MiB, over a part's {PART_LIMIT // MiB} MiB."
            )
        if sum(p.stat().st_size for p in parts[-1]) + size > PART_LIMIT:
            parts.append([])
        parts[-1].append(path)
    if len(parts) > MAX_PARTS:
        raise ValueError(f"{len(parts)} parts are needed, more than {MAX_PARTS}.")
    written = []
    for i, members in enumerate(parts, 1):
        target = dest / f"part-{i}.tar"
        with (
            tempfile.NamedTemporaryFile(dir=dest, suffix=".partial", delete=False) as tmp,
            tarfile.open(fileobj=tmp, mode="w") as tar,
        ):
            for path in members:
                tar.add(path, arcname=str(path.relative_to(out)))
        os.replace(tmp.name, target)
        written.append(target)
    summary = out / "summary.json"
    if summary.is_file():
        shutil.copyfile(summary, dest / "summary.json")
        written.append(dest / "summary.json")
    return written


def unpack(source: Path, out: Path) -> list[str]:
    """Extract the parts :func:`pack` wrote in ``source`` into ``out``; return the names.

    A finished checkpoint replaces the resume state of its run, which the last session
    may have left in ``out``.

    Raises:
        FileNotFoundError: if ``source`` holds no parts.
        ValueError: if a part holds a path outside ``out``.
    """
    parts = sorted(source.glob("part-*.tar"))
    if not parts:
        raise FileNotFoundError(f"no part-*.tar in {source}: give the folder the files came to.")
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for part in parts:
        with tarfile.open(part) as tar:
            for member in tar.getmembers():
                target = (out / member.name).resolve()
                if not member.isfile() or out.resolve() not in target.parents:
                    raise ValueError(f"{part} holds {member.name!r}, outside {out}: not unpacked.")
                source_file = tar.extractfile(member)
                target.parent.mkdir(parents=True, exist_ok=True)
                files.atomic_write(target, source_file.read())
                names.append(member.name)
                if target.suffix == ".pt" and not target.name.endswith(".resume.pt"):
                    base.resume_path_of(target).unlink(missing_ok=True)  # finished there
    if (source / "summary.json").is_file():
        shutil.copyfile(source / "summary.json", out / "summary.json")
    return names


def land(out: Path, dest: Path) -> dict:
    """Move every finished checkpoint of ``out`` to ``dest``, re-evaluated on the CPU.

    Each checkpoint keeps its weights, configuration, command, device and wall time; its
    test metrics are measured again here on the CPU (on the same episodes as every other
    checkpoint) and the GPU's own measurement is kept beside them as ``gpu_metrics``.
    Returns, per checkpoint, the largest difference between the two.
    """
    from metalib import recipes

    landed = {}
    for pt_path in sorted(p for p in out.glob("*.pt") if not p.name.endswith(".resume.pt")):
        run = recipes.load(pt_path, device="cpu")
        family, sidecar = recipes.family_of(run.config.recipe), run.sidecar
        recorded = sidecar["metrics"]
        episodes = {} if family.TEST_EPISODES is None else {"episodes": _episodes(recorded)}
        measured = family.metrics(run, **episodes)
        metrics = {
            **recorded,
            **measured,
            "gpu_metrics": {k: recorded[k] for k in measured if k in recorded},
            "trained_with_torch": sidecar.get("torch_version"),
        }
        checkpoints.save(
            dest / pt_path.stem,
            recipe=run.config.recipe,
            config=run.config.to_dict(),
            state_dict=family.state_dict(run),
            metrics=metrics,
            device=sidecar["device"],
            wall_time_s=sidecar["wall_time_s"],
            command=_landed_command(sidecar["command"], dest / pt_path.stem),
        )
        for path in (*checkpoints.paths(pt_path), base.resume_path_of(pt_path)):
            path.unlink(missing_ok=True)
        landed[pt_path.stem] = _largest_gap(measured, metrics["gpu_metrics"])
    return landed


def _landed_command(command: str, stem: Path) -> str:
    """The ``train`` command that makes ``stem`` in one go: ``--out`` pointed at where the
    checkpoint landed, the scheduler's ``--deadline`` and ``--save-every`` left out."""
    words, kept = shlex.split(command), []
    skip = {"--deadline", "--save-every", "--out"}
    for i, word in enumerate(words):
        if word in skip or (i and words[i - 1] in skip):
            continue
        kept.append(word)
    return shlex.join([*kept, "--out", str(stem)])


def _episodes(metrics: dict) -> int:
    """How many test episodes a sidecar's accuracy was measured on."""
    if "test_episodes" in metrics:
        return int(metrics["test_episodes"])
    found = []

    def walk(value) -> None:
        if isinstance(value, dict):
            if "episodes" in value:
                found.append(int(value["episodes"]))
            for item in value.values():
                walk(item)

    walk(metrics)
    return found[0]


def _largest_gap(a, b) -> float:
    """The largest absolute difference between the numbers at the same places of a and b."""
    if isinstance(a, dict) and isinstance(b, dict):
        return max((_largest_gap(a[k], b[k]) for k in a if k in b), default=0.0)
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b)
    return 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="folder of the runs (resume states live here)")
    parser.add_argument(
        "--deadline",
        type=float,
        default=540,
        help="seconds the command may take (default: %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=8,
        help="concurrent training processes (default: %(default)s)",
    )
    parser.add_argument("--device", default=None, help="cuda or cpu (default: automatic)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="train these jobs only")
    parser.add_argument(
        "--pack", metavar="DEST", help="then pack the results into DEST (at most 8 files)"
    )
    parser.add_argument("--unpack", metavar="SOURCE", help="only unpack SOURCE's parts into --out")
    parser.add_argument(
        "--land",
        metavar="DEST",
        help="only move the finished checkpoints of --out to DEST, re-evaluated on the CPU",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny budgets on a CPU: the whole procedure in about a minute",
    )
    parser.add_argument(
        "--skip-checks", action="store_true", help="skip the CUDA tests and the one-step checks"
    )


def run(args: argparse.Namespace) -> dict:
    """The ``full-budget`` command: checks, training, summary, packing (see the module)."""
    out = Path(args.out)
    if args.unpack:
        return {"unpacked": unpack(Path(args.unpack), out), "out": str(out)}
    if args.land:
        return {"landed_largest_cpu_gpu_gap": land(out, Path(args.land))}
    checks_done: dict = {}
    jobs = SMOKE_JOBS if args.smoke else JOBS
    if args.only:
        unknown = sorted(set(args.only) - {job.name for job in jobs})
        if unknown:
            raise ValueError(f"no jobs named {unknown}; jobs: {[job.name for job in jobs]}.")
        jobs = tuple(job for job in jobs if job.name in args.only)
    device = runtime.device("cpu" if args.smoke else args.device)
    started = time.monotonic()
    summary: dict = {
        "device": runtime.describe_device(device),
        "torch": torch.__version__,
        "deadline_s": args.deadline,
        "checks": checks_done,
    }
    try:  # whatever happens, the summary is written and what there is gets packed
        data = omniglot.load(download=False)  # the cache, built once before the processes
        if not args.skip_checks:
            _say("checks: the CUDA tests, then two steps of each job on the CPU and here")
            checks_done["cuda_tests"] = _guarded(check_cuda_tests)
            steps = {
                job.name: _guarded(check_one_step, job, device, data, smoke=args.smoke)
                for job in jobs
            }
            checks_done["one_step"] = steps
            jobs = tuple(job for job in jobs if steps[job.name].get("agree"))
        left = args.deadline - (time.monotonic() - started)
        summary["jobs"] = schedule(
            jobs, out, deadline=left, workers=args.workers, device=str(device), smoke=args.smoke
        )
    finally:
        summary["wall_s"] = round(time.monotonic() - started, 1)
        out.mkdir(parents=True, exist_ok=True)
        files.atomic_write(out / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
        if args.pack:
            summary["packed"] = [str(p) for p in pack(out, Path(args.pack))]
    return summary


def _guarded(check, *args, **kwargs) -> dict:
    """``check(...)``, or what went wrong: a failing check must not cost the run."""
    try:
        return check(*args, **kwargs)
    except Exception as error:  # any failure is a result worth bringing back
        return {"agree": False, "error": f"{type(error).__name__}: {error}"[-1500:]}
