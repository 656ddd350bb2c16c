"""``mann-omniglot``: a memory-augmented network that *is* the learner.

It trains a :class:`~metalib.algorithms.mann.MANN` (Santoro et al. 2016) on sequences of
Omniglot episodes drawn by chapter 05's sampler: ``n_way`` classes with ``instances``
drawings each, shown in a random order, each with the previous step's label. It is
evaluated, as in the paper, by the accuracy on the 1st, 2nd, ... sight of a class over
test episodes of the same split. Taught in ``notebooks/08_model_based.ipynb``.

With ``embedding`` set, the network's convolutional embedding is a trained ProtoNet's
(chapter 07), frozen: only the controller, the memory's keys and gate and the output layer
learn. The paper has no convolutional embedding (its controller reads the pixels and
everything is learned together), so this departs from it further; it lets a CPU
show one-shot binding of drawings to labels in minutes (chapter 08, section 7).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from metalib import checks, runtime, training
from metalib.algorithms import mann
from metalib.data import episodes, omniglot, splits
from metalib.evaluation import TEST_SEED, test_generator
from metalib.recipes import metric_omniglot
from metalib.recipes.base import Config, Flag, Run, fit, restore_module
from metalib.training import mean_ci95

RECIPES = {
    "mann-omniglot": "a memory-augmented neural network (Santoro et al. 2016) reading "
    "labelled sequences",
}


@dataclass(frozen=True)
class MANNConfig(Config):
    """Hyperparameters of ``mann-omniglot``. Network sizes are the paper's (section 4.1)."""

    n_way: int = 5
    instances: int = 10  # drawings of each class in a sequence: 50 steps for 5-way
    meta_steps: int = 10_000
    meta_batch_size: int = 16  # sequences per step (the paper: 16)
    outer_lr: float = 1e-3
    outer_lr_schedule: str = "constant"
    hidden: int = 200
    memory_slots: int = 128  # 0: the paper's LSTM baseline
    memory_width: int = 40
    reads: int = 4
    gamma: float = 0.95
    scheme: str = "vinyals"
    seed: int = 0
    embedding: str = ""  # a ProtoNet checkpoint whose embedding is used, frozen ("": learned)

    FLAGS: ClassVar[dict[str, Flag]] = {
        "n_way": Flag("classes per sequence"),
        "instances": Flag("drawings of each class per sequence (10, as the paper)"),
        "meta_steps": Flag("outer steps"),
        "meta_batch_size": Flag("sequences per step"),
        "outer_lr": Flag("Adam step size β"),
        "outer_lr_schedule": Flag("β over training", choices=training.SCHEDULES),
        "hidden": Flag("width of the LSTM controller"),
        "memory_slots": Flag("rows of the external memory (0: the paper's LSTM baseline)"),
        "memory_width": Flag("width of a memory row"),
        "reads": Flag("read heads"),
        "gamma": Flag("decay of the least-recently-used weights"),
        "scheme": Flag("class split", name="split", choices=splits.SCHEMES),
        "seed": Flag("seed for weights and sequence sampling"),
        "embedding": Flag(
            "ProtoNet checkpoint (name or path, same split) whose embedding is used, frozen in "
            "eval mode; a departure from the paper, which learns everything from the pixels ('': "
            "learn it with the rest)"
        ),
    }

    def __post_init__(self) -> None:
        self.check_counts(
            {"meta_steps": 0, "seed": 0, "n_way": 2, "instances": 1, "meta_batch_size": 1}
        )
        training.check_outer_lr(self.outer_lr, self.outer_lr_schedule)
        checks.one_of("scheme", self.scheme, splits.SCHEMES)
        self.model()  # the network's own checks (sizes, gamma)

    recipe = "mann-omniglot"

    def model(self) -> mann.MANN:
        return mann.MANN(
            n_way=self.n_way,
            hidden=self.hidden,
            memory_slots=self.memory_slots,
            memory_width=self.memory_width,
            reads=self.reads,
            gamma=self.gamma,
            frozen_embedding=bool(self.embedding),
        )


def config(recipe: str, **overrides: Any) -> MANNConfig:
    """The config of ``mann-omniglot`` with ``overrides``."""
    return MANNConfig(**overrides)


def build(config: MANNConfig) -> mann.MANN:
    """A fresh MANN of ``config``'s sizes."""
    return config.model()


def sequence_sampler(
    data: omniglot.Omniglot, config: MANNConfig, *, split: str, device: torch.device | str = "cpu"
) -> episodes.EpisodeSampler:
    """Episodes of ``split`` with ``instances`` drawings per class (and one unused query).

    Raises:
        ValueError: if ``n_way`` exceeds the split's classes or ``instances`` is above 19.
    """
    classes = splits.class_split(data, scheme=config.scheme, split=split)
    return episodes.EpisodeSampler(
        data, classes, n_way=config.n_way, k_shot=config.instances, k_query=1, device=device
    )


def sample_sequences(
    sampler: episodes.EpisodeSampler, tasks: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """``tasks`` shuffled sequences: images ``(tasks, steps, 1, 28, 28)`` and labels."""
    batch = sampler.sample(tasks, generator=generator)
    return mann.shuffle_sequences(batch.x_support, batch.y_support, generator)


def train(
    config: MANNConfig,
    *,
    data: omniglot.Omniglot | None = None,
    device: torch.device | str | None = None,
    **loop: Any,
) -> Run:
    """Train a fresh MANN with cross-entropy at every step of random training sequences.

    With ``config.embedding``, the embedding is loaded from that ProtoNet checkpoint first
    and not trained. ``loop`` goes to :func:`metalib.recipes.base.fit` (``callback``,
    ``resume_path``, ...).
    """
    dev = runtime.device(device)
    data = omniglot.load() if data is None else data
    sampler = sequence_sampler(data, config, split="train", device=dev)
    torch.manual_seed(config.seed)
    model = build(config)
    if config.embedding:
        metric_omniglot.load_protonet_embedding(
            model.embedding, config.embedding, scheme=config.scheme, option="embedding"
        )
    model = model.to(dev).train()
    generator = torch.Generator().manual_seed(config.seed)

    def step_loss(step: int) -> Tensor:
        x, y = sample_sequences(sampler, config.meta_batch_size, generator)
        logits = model(x, y)  # (tasks, steps, n_way)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    history = fit(step_loss, params, config, model=model, generator=generator, **loop)
    return Run(config, model.eval(), params, history, dev)


class InstanceAccuracy(NamedTuple):
    """Test accuracy on the 1st, 2nd, ... sight of a class, with 95% half-widths."""

    mean: tuple[float, ...]
    ci95: tuple[float, ...]
    episodes: int

    def to_dict(self) -> dict[str, Any]:
        by = {
            str(i + 1): {"mean": m, "ci95": c} for i, (m, c) in enumerate(zip(self.mean, self.ci95))
        }
        return {"by_instance": by, "episodes": self.episodes}


@torch.no_grad()
def accuracy_by_instance(
    model: mann.MANN,
    sampler: episodes.EpisodeSampler,
    *,
    n_episodes: int = 1000,
    seed: int = TEST_SEED,
    chunk: int = 100,
) -> InstanceAccuracy:
    """Accuracy by instance number over ``n_episodes`` test sequences (the same for every model)."""
    checks.count("n_episodes", n_episodes, 2)
    generator = test_generator(seed)
    mode = model.training
    model.eval()
    per_episode = []
    try:
        for lo in range(0, n_episodes, chunk):
            x, y = sample_sequences(sampler, min(chunk, n_episodes - lo), generator)
            right = (model(x, y).argmax(-1) == y).float()  # (tasks, steps)
            sight = mann.instance_numbers(y) - 1  # (tasks, steps) in 0..instances-1
            totals = right.new_zeros(len(y), sampler.k_shot).scatter_add_(1, sight, right)
            per_episode.append((totals / sampler.n_way).cpu())  # (tasks, instances)
    finally:
        model.train(mode)
    mean, ci = mean_ci95(torch.cat(per_episode))
    return InstanceAccuracy(tuple(mean.tolist()), tuple(ci.tolist()), n_episodes)


EVALUATE_OPTIONS = ("episodes",)
TEST_EPISODES = 1000  # test sequences in a sidecar's accuracy


def evaluate(
    run: Run, *, data: omniglot.Omniglot | None = None, episodes: int = TEST_EPISODES
) -> dict[str, Any]:
    """What ``python -m metalib evaluate`` prints: accuracy by instance over test sequences."""
    config = run.config
    data = omniglot.load() if data is None else data
    sampler = sequence_sampler(data, config, split="test", device=run.device)
    result = accuracy_by_instance(run.model, sampler, n_episodes=episodes)
    return {
        "n_way": config.n_way,
        "instances": config.instances,
        "split": config.scheme,
        **result.to_dict(),
    }


def metrics(
    run: Run, *, data: omniglot.Omniglot | None = None, episodes: int = TEST_EPISODES
) -> dict[str, Any]:
    """What a sidecar records: accuracy by instance, and the training loss averaged over
    windows of ``every`` steps (at most 100 windows), for chapter 08's picture of a run."""
    data = omniglot.load() if data is None else data
    sampler = sequence_sampler(data, run.config, split="test", device=run.device)
    losses = run.history.losses
    every = max(1, -(-len(losses) // 100))
    windows = [losses[i : i + every] for i in range(0, len(losses), every)]
    return {
        "test_accuracy": accuracy_by_instance(run.model, sampler, n_episodes=episodes).to_dict(),
        "train_loss_curve": {
            "every": every,
            "mean": [round(sum(w) / len(w), 5) for w in windows],
        },
    }


def state_dict(run: Run) -> dict[str, Tensor]:
    """What a checkpoint keeps: the network's weights."""
    return run.model.state_dict()


def restore(
    config: MANNConfig, state: dict[str, Tensor], device: torch.device
) -> tuple[mann.MANN, dict[str, Tensor]]:
    """The MANN of a checkpoint's ``state``, in eval mode (raises ``ValueError``)."""
    return restore_module(build(config), state, device, "MANN of the sizes its settings describe")
