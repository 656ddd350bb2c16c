"""Command line: ``python -m metalib train RECIPE --out PATH``, ``evaluate PATH.pt``, ``data``.

Examples::

    METALIB_DATA=../shared/data/omniglot METALIB_CACHE=data python -m metalib data

    python -m metalib train sinusoid-maml --out data/checkpoints/sinusoid_maml
    python -m metalib train sinusoid-pretrain --out data/checkpoints/sinusoid_pretrain
    python -m metalib evaluate data/checkpoints/sinusoid_maml.pt --k-shot 5 --tasks 1000

``train`` writes ``PATH.pt`` and ``PATH.json``; ``evaluate`` and ``data`` print one JSON
object each.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Sequence

from metalib import baseline, checkpoints, classification, metric, model_based, runtime
from metalib.data import omniglot, splits
from metalib.recipes import (
    SinusoidConfig,
    evaluate_sinusoid,
    load_learner,
    save_trained,
    train_sinusoid,
)

RECIPES = {
    "sinusoid-maml": "MAML on sinusoid regression (Finn et al. 2017, section 5.1)",
    "sinusoid-fomaml": "first-order MAML (drops the Hessian term)",
    "sinusoid-reptile": "Reptile (Nichol et al. 2018), 5 inner steps",
    "sinusoid-meta-sgd": "Meta-SGD (Li et al. 2017): learned per-weight inner step sizes",
    "sinusoid-anil": "ANIL (Raghu et al. 2020): only the last layer adapts, 5 inner steps",
    "sinusoid-pretrain": "the paper's baseline: one network regressed on all tasks",
    "maml-omniglot": "MAML on Omniglot (Finn et al. 2017, section 5.2), the paper's settings",
    "fomaml-omniglot": "first-order MAML on Omniglot",
    "protonet-omniglot": "Prototypical Networks (Snell et al. 2017) on Omniglot",
    "matching-omniglot": "Matching Networks (Vinyals et al. 2016), no full-context embeddings",
    "siamese-omniglot": "Siamese networks (Koch et al. 2015) for one-shot classification",
    "transfer-omniglot": "the transfer-learning baseline: pretrain a classifier, fit a new "
    "head per episode",
    "mann-omniglot": "a memory-augmented neural network (Santoro et al. 2016) reading "
    "labelled sequences",
    "cnp-sinusoid": "a conditional neural process (Garnelo et al. 2018): no gradient steps at "
    "test time",
}
METRIC_RECIPES = tuple(f"{m}-omniglot" for m in metric.METHODS)
REPORT_STEPS = (0, 1, 5, 10)
# `train` flags that only Omniglot recipes take.
OMNIGLOT_ONLY = (
    "n_way",
    "train_way",
    "split",
    "instances",
    "fine_tune",
    "save_every",
    "episodes",
    "batch_norm",
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metalib",
        description="Train and evaluate the course's meta-learners.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples::", 1)[1],
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    defaults = SinusoidConfig()
    train = commands.add_parser(
        "train",
        help="train a recipe and write PATH.pt plus its PATH.json sidecar",
        description="Train a recipe and write PATH.pt plus its PATH.json sidecar. Recipes: "
        + "; ".join(f"{k}: {v}" for k, v in RECIPES.items()),
    )
    train.add_argument("recipe", choices=sorted(RECIPES), help="what to train")
    train.add_argument("--out", required=True, help="output path stem (PATH.pt, PATH.json)")
    hyperparameters = (
        ("--meta-steps", _non_negative_int, "outer steps"),
        ("--meta-batch-size", _positive_int, "tasks per outer step"),
        ("--k-shot", _positive_int, "support points per task in training"),
        ("--k-query", _positive_int, "query points per task in training"),
        ("--inner-steps", _non_negative_int, "inner gradient steps in training"),
        ("--inner-lr", float, "inner step size α (Meta-SGD: the step sizes' initial value)"),
        ("--outer-lr", float, "Adam step size β"),
        ("--seed", _non_negative_int, "seed for weights and task sampling"),
    )
    for flag, kind, text in hyperparameters:
        default = getattr(defaults, flag[2:].replace("-", "_"))
        train.add_argument(
            flag,
            type=kind,
            default=None,
            help=f"{text} (default: {default}, unless the recipe sets its own)",
        )
    train.add_argument(
        "--first-order", action="store_true", help="drop second-order terms (MAML, Meta-SGD, ANIL)"
    )
    omniglot_flags = train.add_argument_group("Omniglot recipes")
    omniglot_flags.add_argument(
        "--n-way",
        type=_positive_int,
        default=None,
        help="classes per episode (default: 5); metric recipes: per test episode",
    )
    omniglot_flags.add_argument(
        "--train-way",
        type=_positive_int,
        default=None,
        help="metric recipes: classes per training episode (default: 60, as ProtoNets)",
    )
    omniglot_flags.add_argument(
        "--split", choices=splits.SCHEMES, default=None, help="class split (default: vinyals)"
    )
    omniglot_flags.add_argument(
        "--batch-norm",
        choices=("transductive", "running"),
        default=None,
        help="statistics of each batch (the paper, default) or running statistics at test time",
    )
    omniglot_flags.add_argument(
        "--episodes",
        type=_positive_int,
        default=None,
        help="test episodes for the accuracy in the sidecar (default: 600 for MAML, 1000 "
        "for the metric recipes)",
    )
    omniglot_flags.add_argument(
        "--instances",
        type=_positive_int,
        default=None,
        help="mann-omniglot: drawings of each class per sequence (default: 10, as the paper)",
    )
    omniglot_flags.add_argument(
        "--fine-tune",
        choices=baseline.FINE_TUNE,
        default=None,
        help="transfer-omniglot: fit a new head on frozen features (default) or fine-tune "
        "the whole network per episode",
    )
    omniglot_flags.add_argument(
        "--save-every",
        type=_positive_int,
        default=None,
        help="steps between saves of PATH.resume.pt; rerun the same command to resume",
    )
    train.add_argument("--device", default=None, help="cuda, mps or cpu (default: automatic)")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    evaluate = commands.add_parser(
        "evaluate",
        help="print test MSE after 0, 1, 5 and 10 inner steps as one JSON object",
        description="Adapt a checkpoint to held-out tasks and print one JSON object with the "
        "test MSE (mean and 95%% interval) after 0, 1, 5 and 10 inner steps.",
    )
    evaluate.add_argument("checkpoint", help="PATH.pt written by `train`")
    evaluate.add_argument(
        "--k-shot",
        type=_positive_int,
        default=None,
        help="support points (sinusoid, default 5) or images per class (Omniglot, default: "
        "the checkpoint's) per test task",
    )
    evaluate.add_argument(
        "--n-way",
        type=_positive_int,
        default=None,
        help="Omniglot: classes per test episode (default and only valid value: the checkpoint's)",
    )
    evaluate.add_argument(
        "--episodes",
        type=_positive_int,
        default=None,
        help="Omniglot: number of test episodes (default: 600 for MAML, 1000 for the metric "
        "recipes)",
    )
    evaluate.add_argument(
        "--tasks",
        type=_positive_int,
        default=1000,
        help="sinusoid: number of test tasks (default: %(default)s)",
    )
    evaluate.add_argument(
        "--inner-lr", type=float, default=None, help="inner step size (default: the checkpoint's)"
    )
    evaluate.add_argument(
        "--fine-tune",
        choices=baseline.FINE_TUNE,
        default=None,
        help="transfer-omniglot: a new head on frozen features or the whole network "
        "(default: the checkpoint's)",
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
    return parser


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


# `train` flags that both recipe families take as configuration overrides.
SHARED_HYPERPARAMETERS = (
    "meta_steps",
    "meta_batch_size",
    "k_query",
    "inner_steps",
    "inner_lr",
    "outer_lr",
    "seed",
)


def _overrides(args: argparse.Namespace, names: Sequence[str]) -> dict:
    """The hyperparameters given on the command line (left out: the recipe's own)."""
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _train(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    for flag in OMNIGLOT_ONLY:
        if getattr(args, flag) is not None:
            raise ValueError(
                f"--{flag.replace('_', '-')} applies to Omniglot recipes, not {args.recipe}."
            )
    overrides = _overrides(args, ("k_shot", *SHARED_HYPERPARAMETERS))
    if args.first_order:
        overrides["first_order"] = True
    config = SinusoidConfig.for_method(args.recipe.removeprefix("sinusoid-"), **overrides)
    device = runtime.device(args.device)
    trained = train_sinusoid(config, device=device, progress=not args.no_progress)
    curve = evaluate_sinusoid(trained.learner, k_shot=5, n_tasks=1000, max_steps=max(REPORT_STEPS))
    metrics = {"test_mse_k5_1000_tasks": curve.to_dict(REPORT_STEPS)}
    return _save_run(trained, args, argv, save_trained, metrics)


def _save_run(trained, args: argparse.Namespace, argv: Sequence[str], save, metrics: dict) -> dict:
    """Add the step count and final training loss to ``metrics``, save, and report."""
    losses = trained.history.losses
    tail = losses[-100:] or [float("nan")]
    metrics = {
        "steps": len(losses),
        "final_train_loss_mean_last_100": sum(tail) / len(tail),
        **metrics,
    }
    command = "python -m metalib " + shlex.join(argv)
    pt_path, json_path = save(trained, args.out, metrics=metrics, command=command)
    return {
        "checkpoint": str(pt_path),
        "sidecar": str(json_path),
        "wall_time_s": round(trained.history.seconds, 2),
        **metrics,
    }


def _refuse(
    args: argparse.Namespace, flags: Sequence[str], why: str, *, what: str | None = None
) -> None:
    """Fail on any of ``flags`` given for ``what`` (default: the recipe being trained)."""
    what = what or args.recipe
    for flag in flags:
        value = getattr(args, flag)
        if value is not None and value is not False:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to {what}: {why}.")


def _train_cnp(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    _refuse(args, ("inner_steps", "inner_lr", "first_order"), "it takes no gradient steps")
    _refuse(args, ("k_shot",), "each step draws 1 to 10 support points")
    _refuse(args, OMNIGLOT_ONLY, "it is not an Omniglot recipe")
    overrides = _overrides(args, ("meta_steps", "meta_batch_size", "k_query", "outer_lr", "seed"))
    config = model_based.CNPConfig(**overrides)
    trained = model_based.train_cnp(
        config, device=runtime.device(args.device), progress=not args.no_progress
    )
    metrics = {
        **{
            f"test_k{k}_1000_tasks": model_based.evaluate_cnp(trained.model, k_shot=k).to_dict()
            for k in (5, 10)
        },
    }
    return _save_run(trained, args, argv, model_based.save_cnp, metrics)


def _evaluate_cnp(args: argparse.Namespace) -> dict:
    what = model_based.CNPConfig.recipe
    _refuse(args, ("inner_lr",), "it takes no gradient steps", what=what)
    _refuse(args, ("n_way", "episodes"), "it is a sinusoid checkpoint", what=what)
    k_shot = 5 if args.k_shot is None else args.k_shot
    config, model = model_based.load_cnp(args.checkpoint, device=runtime.device(args.device))
    score = model_based.evaluate_cnp(model, k_shot=k_shot, n_tasks=args.tasks)
    return {
        "checkpoint": args.checkpoint,
        "recipe": config.recipe,
        "k_shot": k_shot,
        "tasks": args.tasks,
        "mse": {"mean": score.mse, "ci95": score.mse_ci95},
        "nll": {"mean": score.nll, "ci95": score.nll_ci95},
    }


def _train_metric(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    for flag in (
        "meta_batch_size",
        "inner_steps",
        "inner_lr",
        "save_every",
        "batch_norm",
        "instances",
    ):
        if getattr(args, flag) is not None:
            raise ValueError(f"--{flag.replace('_', '-')} does not apply to {args.recipe}.")
    if args.first_order:
        raise ValueError(f"--first-order does not apply to {args.recipe}: it has no inner loop.")
    overrides = _overrides(args, ("n_way", "k_shot", "train_way", "k_query", "meta_steps"))
    overrides.update(_overrides(args, ("outer_lr", "seed")))
    config = metric.MetricConfig(
        method=args.recipe.removesuffix("-omniglot"), scheme=args.split or "vinyals", **overrides
    )
    device = runtime.device(args.device)
    data = omniglot.load()
    trained = metric.train_metric(config, data=data, device=device, progress=not args.no_progress)
    episodes = args.episodes or 1000
    accuracy = {}
    for n_way in sorted({config.n_way, 5, 20}):
        sampler = metric.evaluation_sampler(
            data, scheme=config.scheme, n_way=n_way, k_shot=config.k_shot, device=device
        )
        score = metric.evaluate_metric(trained.model, config, sampler, n_episodes=episodes)
        accuracy[f"{n_way}-way {config.k_shot}-shot"] = score.to_dict()
    metrics = {
        "test_accuracy": accuracy,
    }
    return _save_run(trained, args, argv, metric.save_metric, metrics)


def _evaluate_metric(args: argparse.Namespace) -> dict:
    if args.inner_lr is not None:
        raise ValueError("--inner-lr does not apply to metric-based checkpoints.")
    device = runtime.device(args.device)
    config, model = metric.load_metric(args.checkpoint, device=device)
    n_way = config.n_way if args.n_way is None else args.n_way
    k_shot = config.k_shot if args.k_shot is None else args.k_shot
    sampler = metric.evaluation_sampler(
        omniglot.load(), scheme=config.scheme, n_way=n_way, k_shot=k_shot, device=device
    )
    episodes = args.episodes or 1000
    score = metric.evaluate_metric(model, config, sampler, n_episodes=episodes)
    return {
        "checkpoint": args.checkpoint,
        "recipe": config.recipe,
        "n_way": n_way,
        "k_shot": k_shot,
        "split": config.scheme,
        "episodes": episodes,
        "accuracy": {"mean": score.mean, "ci95": score.ci95},
    }


def _train_mann(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    _refuse(args, ("inner_steps", "inner_lr", "first_order"), "it takes no gradient steps")
    _refuse(args, ("k_shot", "k_query"), "a sequence has --instances drawings of each class")
    _refuse(args, ("train_way", "save_every", "batch_norm"), "not a recipe option")
    overrides = _overrides(args, ("n_way", "instances", "meta_steps", "meta_batch_size"))
    overrides.update(_overrides(args, ("outer_lr", "seed")))
    config = model_based.MANNConfig(scheme=args.split or "vinyals", **overrides)
    device = runtime.device(args.device)
    data = omniglot.load()
    trained = model_based.train_mann(
        config, data=data, device=device, progress=not args.no_progress
    )
    episodes = args.episodes or 1000
    sampler = model_based.sequence_sampler(data, config, split="test", device=device)
    metrics = {
        "test_accuracy": model_based.evaluate_mann(
            trained.model, sampler, n_episodes=episodes
        ).to_dict(),
    }
    return _save_run(trained, args, argv, model_based.save_mann, metrics)


def _evaluate_mann(args: argparse.Namespace) -> dict:
    what = model_based.MANNConfig.recipe
    _refuse(args, ("inner_lr",), "it takes no gradient steps", what=what)
    _refuse(args, ("n_way", "k_shot"), "the sequences keep the checkpoint's shape", what=what)
    device = runtime.device(args.device)
    config, model = model_based.load_mann(args.checkpoint, device=device)
    sampler = model_based.sequence_sampler(omniglot.load(), config, split="test", device=device)
    episodes = args.episodes or 1000
    score = model_based.evaluate_mann(model, sampler, n_episodes=episodes)
    return {
        "checkpoint": args.checkpoint,
        "recipe": config.recipe,
        "n_way": config.n_way,
        "instances": config.instances,
        "split": config.scheme,
        **score.to_dict(),
    }


def _train_transfer(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    _refuse(args, ("inner_steps", "inner_lr", "first_order"), "it has no inner loop")
    _refuse(args, ("k_shot", "k_query", "n_way", "train_way"), "it trains on images, not episodes")
    _refuse(args, ("instances", "save_every", "batch_norm"), "not a recipe option")
    overrides = _overrides(args, ("meta_steps", "outer_lr", "seed", "fine_tune"))
    if args.meta_batch_size is not None:
        overrides["batch_size"] = args.meta_batch_size
    config = baseline.TransferConfig(scheme=args.split or "vinyals", **overrides)
    device = runtime.device(args.device)
    data = omniglot.load()
    trained = baseline.train_transfer(
        config, data=data, device=device, progress=not args.no_progress
    )
    episodes = args.episodes or 1000
    accuracy = {}
    for n_way, k_shot in ((5, 1), (5, 5), (20, 1), (20, 5)):
        sampler = metric.evaluation_sampler(
            data, scheme=config.scheme, n_way=n_way, k_shot=k_shot, device=device
        )
        score = baseline.evaluate_transfer(trained.model, config, sampler, n_episodes=episodes)
        accuracy[f"{n_way}-way {k_shot}-shot"] = score.to_dict()
    metrics = {
        "test_accuracy": accuracy,
    }
    return _save_run(trained, args, argv, baseline.save_transfer, metrics)


def _evaluate_transfer(args: argparse.Namespace) -> dict:
    _refuse(args, ("inner_lr",), "it has no inner loop", what=baseline.TransferConfig.recipe)
    device = runtime.device(args.device)
    config, model = baseline.load_transfer(args.checkpoint, device=device)
    n_way = 5 if args.n_way is None else args.n_way
    k_shot = 1 if args.k_shot is None else args.k_shot
    sampler = metric.evaluation_sampler(
        omniglot.load(), scheme=config.scheme, n_way=n_way, k_shot=k_shot, device=device
    )
    episodes = args.episodes or 1000
    score = baseline.evaluate_transfer(
        model, config, sampler, n_episodes=episodes, fine_tune=args.fine_tune
    )
    return {
        "checkpoint": args.checkpoint,
        "recipe": config.recipe,
        "n_way": n_way,
        "k_shot": k_shot,
        "split": config.scheme,
        "fine_tune": args.fine_tune or config.fine_tune,
        "episodes": episodes,
        "accuracy": {"mean": score.mean, "ci95": score.ci95},
    }


def _train_omniglot(args: argparse.Namespace, argv: Sequence[str]) -> dict:
    if args.recipe == baseline.TransferConfig.recipe:
        return _train_transfer(args, argv)
    if args.fine_tune is not None:
        raise ValueError(f"--fine-tune applies to transfer-omniglot, not {args.recipe}.")
    if args.recipe in METRIC_RECIPES:
        return _train_metric(args, argv)
    if args.recipe == model_based.MANNConfig.recipe:
        return _train_mann(args, argv)
    if args.instances is not None:
        raise ValueError(f"--instances applies to mann-omniglot, not {args.recipe}.")
    if args.train_way is not None:
        raise ValueError(f"--train-way applies to the metric recipes, not {args.recipe}.")
    overrides = _overrides(args, SHARED_HYPERPARAMETERS)  # k_shot goes to paper()
    method = args.recipe.removesuffix("-omniglot")
    if args.first_order or method == "fomaml":
        overrides["first_order"] = True
    if args.batch_norm is not None:
        overrides["transductive_bn"] = args.batch_norm == "transductive"
    config = classification.OmniglotConfig.paper(
        args.n_way or 5,
        args.k_shot or 1,
        method=method,
        scheme=args.split or "vinyals",
        **overrides,
    )
    device = runtime.device(args.device)
    data = omniglot.load()
    pt_path, _ = checkpoints.paths(args.out)
    resume_path = pt_path.with_name(pt_path.name.removesuffix(".pt") + ".resume.pt")
    trained = classification.train_omniglot(
        config,
        data=data,
        device=device,
        progress=not args.no_progress,
        resume_path=resume_path,
        save_every=args.save_every or 200,
    )
    sampler = classification.sampler_for(
        data, config, split="test", k_query=classification.TEST_K_QUERY, device=device
    )
    episodes = args.episodes or 600
    curve = classification.evaluate_omniglot(
        trained.model,
        trained.params,
        sampler,
        n_episodes=episodes,
        inner_lr=config.inner_lr,
        max_steps=config.test_inner_steps,
    )
    metrics = {
        "steps": len(trained.history.losses),
        "test_episodes": episodes,
        "test_accuracy_by_step": curve.to_dict(range(config.test_inner_steps + 1)),
    }
    command = "python -m metalib " + shlex.join(argv)
    pt_path, json_path = classification.save_classifier(
        trained, args.out, metrics=metrics, command=command
    )
    resume_path.unlink(missing_ok=True)  # the run is complete
    return {
        "checkpoint": str(pt_path),
        "sidecar": str(json_path),
        "wall_time_s": round(trained.history.seconds, 2),
        **metrics,
    }


def _evaluate_omniglot(args: argparse.Namespace) -> dict:
    device = runtime.device(args.device)
    config, model, params = classification.load_classifier(args.checkpoint, device=device)
    n_way = config.n_way if args.n_way is None else args.n_way
    k_shot = config.k_shot if args.k_shot is None else args.k_shot
    test_config = dataclasses.replace(config, n_way=n_way, k_shot=k_shot)
    data = omniglot.load()
    sampler = classification.sampler_for(
        data, test_config, split="test", k_query=classification.TEST_K_QUERY, device=device
    )
    inner_lr = config.inner_lr if args.inner_lr is None else args.inner_lr
    episodes = args.episodes or 600
    curve = classification.evaluate_omniglot(
        model,
        params,
        sampler,
        n_episodes=episodes,
        inner_lr=inner_lr,
        max_steps=config.test_inner_steps,
    )
    last = config.test_inner_steps
    return {
        "checkpoint": args.checkpoint,
        "recipe": config.recipe,
        "n_way": n_way,
        "k_shot": k_shot,
        "split": config.scheme,
        "episodes": episodes,
        "inner_lr": inner_lr,
        "inner_steps": last,
        "accuracy": {"mean": curve.mean[last], "ci95": curve.ci95[last]},
        "accuracy_by_step": curve.to_dict(range(last + 1)),
    }


def _evaluate(args: argparse.Namespace) -> dict:
    pt_path, json_path = checkpoints.paths(args.checkpoint)
    recipe = json.loads(json_path.read_text()).get("recipe", "") if json_path.is_file() else ""
    if args.fine_tune is not None and recipe != baseline.TransferConfig.recipe:
        raise ValueError(f"--fine-tune applies to transfer-omniglot checkpoints, not {recipe!r}.")
    if pt_path.is_file() and recipe == model_based.CNPConfig.recipe:
        return _evaluate_cnp(args)
    if pt_path.is_file() and recipe == model_based.MANNConfig.recipe:
        return _evaluate_mann(args)
    if pt_path.is_file() and recipe == baseline.TransferConfig.recipe:
        return _evaluate_transfer(args)
    if pt_path.is_file() and recipe in METRIC_RECIPES:
        return _evaluate_metric(args)
    if pt_path.is_file() and recipe.endswith("-omniglot"):
        return _evaluate_omniglot(args)
    if args.n_way is not None:
        raise ValueError("--n-way applies to Omniglot checkpoints, not to sinusoid ones.")
    if args.k_shot is None:
        args.k_shot = 5
    learner = load_learner(args.checkpoint, device=runtime.device(args.device))
    curve = evaluate_sinusoid(
        learner,
        k_shot=args.k_shot,
        n_tasks=args.tasks,
        inner_lr=args.inner_lr,
        max_steps=max(REPORT_STEPS),
    )
    inner_lr = args.inner_lr if args.inner_lr is not None else learner.config.inner_lr
    return {
        "checkpoint": args.checkpoint,
        "recipe": learner.config.recipe,
        "k_shot": args.k_shot,
        "tasks": args.tasks,
        "inner_lr": "learned (Meta-SGD)"
        if isinstance(learner.inner_lr, dict) and args.inner_lr is None
        else inner_lr,
        "mse": curve.to_dict(REPORT_STEPS),
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        recipe = getattr(args, "recipe", "")
        train = {"cnp-sinusoid": _train_cnp}.get(recipe, _train)
        train = _train_omniglot if recipe.endswith("-omniglot") else train
        commands = {"train": lambda: train(args, argv), "evaluate": lambda: _evaluate(args)}
        result = commands.get(args.command, lambda: _data(args))()
    except (ValueError, OSError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0
