"""Command line: ``python -m metalib train RECIPE --out PATH``, ``evaluate PATH.pt``, ``data``.

Examples::

    METALIB_DATA=../shared/data/omniglot METALIB_CACHE=data python -m metalib data

    python -m metalib train sinusoid-maml --out data/checkpoints/sinusoid_maml
    python -m metalib train protonet-omniglot --k-shot 5 --out my_protonet --save-every 100
    python -m metalib evaluate data/checkpoints/sinusoid_maml.pt --k-shot 5 --tasks 1000

``train`` writes ``PATH.pt`` and ``PATH.json``; stopped (Ctrl-C, a kill) it keeps its state
in ``PATH.resume.pt``, and the same command continues from there. ``evaluate`` and
``data`` print one JSON object each. Every recipe's flags come from its config
(``train RECIPE --help``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import signal
import sys
import threading
from collections.abc import Sequence

from metalib import checkpoints, full_budget, runtime
from metalib.data import omniglot, splits
from metalib.recipes import RECIPES, base, family_of, transfer_omniglot
from metalib.recipes import load as load_run
from metalib.recipes import save as save_run

# `evaluate` options: flag help. Each family's EVALUATE_OPTIONS says which apply to it.
EVALUATE_OPTIONS = {
    "k_shot": "support points (sinusoid) or images per class (Omniglot) per test task",
    "n_way": "Omniglot: classes per test episode",
    "episodes": "Omniglot: number of test episodes",
    "tasks": "sinusoid: number of test tasks",
    "inner_lr": "inner step size (default: the checkpoint's)",
    "fine_tune": "transfer-omniglot: a new head on frozen features or the whole network",
}


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{value} episodes give no interval: use 2 or more")
    return value


def _flag_name(name: str, flag: base.Flag) -> str:
    return "--" + (flag.name or name.replace("_", "-"))


def _add_config_flags(parser: argparse.ArgumentParser, config: base.Config) -> None:
    """One flag per field in ``config.FLAGS`` that applies to its method; default None
    (the recipe's own value, shown in the help)."""
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        flag = config.FLAGS.get(field.name)
        method = getattr(config, "method", None)
        if flag is None or (flag.methods is not None and method not in flag.methods):
            continue
        default = getattr(config, field.name)
        text = f"{flag.help} (default: {default})"
        options: dict = {"dest": field.name, "default": None, "help": text}
        if isinstance(flag.choices, dict):
            shown = next(k for k, v in flag.choices.items() if v == default)
            options.update(choices=list(flag.choices), help=f"{flag.help} (default: {shown})")
        elif flag.choices is not None:
            options.update(choices=list(flag.choices))
        elif isinstance(default, bool):  # --first-order and --no-first-order
            shown = "on" if default else "off"
            options.update(
                action=argparse.BooleanOptionalAction, help=f"{flag.help} (default: {shown})"
            )
        elif isinstance(default, tuple):
            options.update(type=int, nargs="+", metavar="N")
        else:
            options.update(type=type(default))
        parser.add_argument(_flag_name(field.name, flag), **options)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metalib",
        description="Train and evaluate the course's meta-learners.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    train = commands.add_parser(
        "train",
        help="train a recipe and write PATH.pt plus its PATH.json sidecar",
        description="Train a recipe and write PATH.pt plus its PATH.json sidecar. "
        "`train RECIPE --help` lists the recipe's own flags.",
    )
    by_recipe = train.add_subparsers(dest="recipe", required=True, metavar="RECIPE")
    for name, family in RECIPES.items():
        sub = by_recipe.add_parser(
            name, help=family.RECIPES[name], description=family.RECIPES[name]
        )
        sub.add_argument("--out", required=True, help="output path stem (PATH.pt, PATH.json)")
        _add_config_flags(sub, family.config(name))
        if family.TEST_EPISODES is not None:
            sub.add_argument(
                "--episodes",
                type=_at_least_two,
                default=family.TEST_EPISODES,
                help="test episodes for the accuracy in the sidecar (default: %(default)s)",
            )
        sub.add_argument(
            "--save-every",
            type=int,
            default=200,
            help="steps between saves of PATH.resume.pt (default: %(default)s)",
        )
        sub.add_argument(
            "--deadline",
            type=float,
            default=None,
            metavar="SECONDS",
            help="stop at the first step boundary SECONDS after training starts (data "
            "loading included), keep PATH.resume.pt and exit with code 3 (the same command "
            "goes on)",
        )
        sub.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
        sub.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    evaluate = commands.add_parser(
        "evaluate",
        help="evaluate a checkpoint on the course's test tasks; print one JSON object",
        description="Evaluate a checkpoint on the course's held-out tasks or test episodes and "
        "print one JSON object. Options a checkpoint's recipe does not take are refused.",
    )
    evaluate.add_argument("checkpoint", help="PATH.pt written by `train`")
    for name, text in EVALUATE_OPTIONS.items():
        kind = {"inner_lr": float, "fine_tune": str}.get(name, int)
        choices = transfer_omniglot.FINE_TUNE if name == "fine_tune" else None
        evaluate.add_argument(
            "--" + name.replace("_", "-"), type=kind, choices=choices, default=None, help=text
        )
    evaluate.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")

    data = commands.add_parser(
        "data",
        help="find (or download) Omniglot, build its cache, print counts per split as JSON",
        description="Find the Omniglot archives in METALIB_DATA (downloading them if absent), "
        "check them, build the 28x28 cache in METALIB_CACHE, and print one JSON object: "
        "where everything is, and per split the alphabets, characters, classes with "
        "rotations and images.",
    )
    data.add_argument("--no-download", action="store_true", help="fail instead of downloading")

    gpu = commands.add_parser(
        "full-budget",
        help="train every paper-budget Omniglot checkpoint, resumably, inside a deadline",
        description=full_budget.__doc__.split("\n\n")[1],
    )
    full_budget.add_arguments(gpu)
    return parser


def config_of(args: argparse.Namespace) -> base.Config:
    """The config that ``train RECIPE FLAGS`` trains: the recipe's, with the flags given."""
    family = RECIPES[args.recipe]
    overrides = {}
    for name, flag in family.config(args.recipe).FLAGS.items():
        value = getattr(args, name, None)
        if value is not None:
            choices = flag.choices if isinstance(flag.choices, dict) else {}
            overrides[name] = choices.get(value, tuple(value) if isinstance(value, list) else value)
    return family.config(args.recipe, **overrides)


def _train(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    family = RECIPES[args.recipe]
    config = config_of(args)
    pt_path, _ = checkpoints.paths(args.out)
    if not pt_path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot write {pt_path}: directory {pt_path.parent} does not exist."
        )
    resume_path = base.resume_path_of(args.out)
    run = family.train(
        config,
        device=runtime.device(args.device),
        progress=not args.no_progress,
        resume_path=resume_path,
        save_every=args.save_every,
        callback=None if args.deadline is None else base.deadline(args.deadline),
    )
    if not run.finished:
        raise Stopped(f"stopped after {run.history.steps} of {config.meta_steps} steps")
    episodes = {} if family.TEST_EPISODES is None else {"episodes": args.episodes}
    losses = run.history.losses
    tail = losses[-100:] or [float("nan")]
    metrics = {
        "steps": len(losses),
        "final_train_loss_mean_last_100": sum(tail) / len(tail),
        **family.metrics(run, **episodes),
    }
    command = "python -m metalib " + shlex.join(argv)
    pt_path, json_path = save_run(run, args.out, metrics=metrics, command=command)
    resume_path.unlink(missing_ok=True)  # the run is complete
    return {
        "checkpoint": str(pt_path),
        "sidecar": str(json_path),
        "wall_time_s": round(run.history.seconds, 2),
        **metrics,
    }


def _evaluate(args: argparse.Namespace) -> dict:
    run = load_run(args.checkpoint, device=args.device)
    recipe = run.config.recipe
    family = family_of(recipe)
    options = {n: getattr(args, n) for n in EVALUATE_OPTIONS if getattr(args, n) is not None}
    for name in options:
        if name not in family.EVALUATE_OPTIONS:
            takes = ", ".join("--" + o.replace("_", "-") for o in family.EVALUATE_OPTIONS)
            raise ValueError(
                f"--{name.replace('_', '-')} does not apply to {recipe} checkpoints "
                f"(they take {takes})."
            )
    return {"checkpoint": args.checkpoint, "recipe": recipe, **family.evaluate(run, **options)}


def _data(args: argparse.Namespace) -> dict:
    dataset = omniglot.load(download=not args.no_download)
    per_split = {
        scheme: {
            split: splits.summary(
                dataset,
                splits.class_split(
                    dataset, scheme=scheme, split=split, download=not args.no_download
                ),
            )
            for split in splits.SPLITS[scheme]
        }
        for scheme in splits.SCHEMES
    }
    return {
        "data_dir": str(dataset.data_dir),
        "cache": str(dataset.cache_path),
        "archives": dataset.sources,
        "vinyals_split_files_official_md5": splits.split_files_md5(dataset.data_dir),
        "images": len(dataset.images),
        "image_shape": list(dataset.images.shape[1:]),
        "splits": per_split,
    }


class Stopped(Exception):
    """Training stopped before its last step (a deadline): its state is kept."""


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # a kill stops training like Ctrl-C: the resume state is saved


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    commands = {
        "train": lambda: _train(args, argv),
        "evaluate": lambda: _evaluate(args),
        "full-budget": lambda: full_budget.run(args),
    }
    trains = args.command == "train"
    on_kill = trains and threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_kill else None
    try:
        result = commands.get(args.command, lambda: _data(args))()
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, Stopped) as stop:
        if not trains:
            raise
        resume = base.resume_path_of(args.out)
        what = str(stop) or "stopped"
        print(f"{what}: the state is in {resume}; run the same command to go on.", file=sys.stderr)
        return 3 if isinstance(stop, Stopped) else 130
    finally:
        if on_kill:
            signal.signal(signal.SIGTERM, previous)
    print(json.dumps(result, indent=2))
    return 0
