"""Networks used in the course.

``SinusoidMLP`` is the regression network of MAML (Finn et al. 2017, section 5.1): two
hidden layers of 40 units with ReLU, 1 input, 1 output. Taught in
``notebooks/02_maml_sinusoid.ipynb``.

``ConvNet`` is the few-shot image classifier of Vinyals et al. (2016) as MAML uses it on
Omniglot (Finn et al. 2017, section 5.2): four blocks of 3×3 convolution with 64 filters,
batch norm and ReLU, downsampling by stride-2 convolutions (the paper's Omniglot choice)
or by 2×2 max-pooling, the feature map averaged over space, and a linear head with
``n_way`` outputs. Its batch norm is transductive: it always normalises with the
statistics of the batch it is given (a task's support set, or its query set) and keeps no
running statistics, as in the paper; this keeps it a pure function of its parameters,
which ``vmap`` over tasks needs. It is written from elementary operations
(:class:`TransductiveBatchNorm2d`) rather than with ``nn.BatchNorm2d``: under ``vmap``,
the second derivative through PyTorch's fused batch-norm kernel differs from the
per-task result (by 6e-4 in float64 on a 3-task check, ``tests/test_models.py``; see
pytorch/functorch#534), which would silently corrupt second-order MAML.

``ConvEmbedding`` is the embedding of the metric-based family (Prototypical Networks,
Snell et al. 2017, section 3.1; Matching Networks, Vinyals et al. 2016): the same four
blocks with max-pooling and ordinary ``nn.BatchNorm2d`` (running statistics in eval
mode), no head, so a 28×28 image becomes a 64-d vector. These methods take first-order
gradients only, so the fused batch norm is safe for them.

Models are plain ``nn.Module``s; algorithms run them through
``torch.func.functional_call`` with a parameter dict.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn
from torch.func import functional_call

from metalib import checks


class SinusoidMLP(nn.Module):
    """1 → 40 → 40 → 1 with ReLU, the MAML paper's sinusoid regressor."""

    def __init__(self, *, hidden: tuple[int, ...] = (40, 40)) -> None:
        super().__init__()
        if not hidden or any(not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"hidden={hidden!r} must be a non-empty tuple of positive ints.")
        self.hidden = tuple(hidden)
        sizes = (1, *hidden, 1)
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def head_names(self) -> tuple[str, ...]:
        """Names of the last layer's parameters (what ANIL adapts)."""
        last = len(self.net) - 1
        return (f"net.{last}.weight", f"net.{last}.bias")

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(..., n, 1)`` inputs to ``(..., n, 1)`` predictions."""
        return self.net(x)


class TransductiveBatchNorm2d(nn.Module):
    """Batch norm with the statistics of the current batch only, from elementary ops.

    ``y = (x - mean) / sqrt(var + eps) * weight + bias``, with the mean and the (biased)
    variance of each channel over the batch and both spatial dimensions. The forward
    pass equals ``nn.BatchNorm2d(channels, track_running_stats=False)``.
    """

    def __init__(self, channels: int, *, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(dim=(0, 2, 3), keepdim=True)  # (1, channels, 1, 1)
        var = (x - mean).pow(2).mean(dim=(0, 2, 3), keepdim=True)  # (1, channels, 1, 1)
        scale = self.weight[:, None, None] * torch.rsqrt(var + self.eps)
        return (x - mean) * scale + self.bias[:, None, None]


class RunningBatchNorm2d(TransductiveBatchNorm2d):
    """Batch norm that normalises with running statistics in eval mode.

    In train mode it is :class:`TransductiveBatchNorm2d` (batch statistics, a pure
    function, so ``vmap`` over tasks works). The running mean and variance are updated
    only by :meth:`observe`, outside any ``vmap``; in eval mode every image is normalised
    with them, so a prediction no longer depends on the other images of its batch.
    """

    def __init__(self, channels: int, *, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__(channels, eps=eps)
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Move the running statistics towards those of the batch ``x`` by ``momentum``."""
        self.running_mean.lerp_(x.mean(dim=(0, 2, 3)), self.momentum)
        self.running_var.lerp_(x.var(dim=(0, 2, 3), unbiased=True), self.momentum)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return super().forward(x)
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)  # (channels,)
        shift = self.bias - self.running_mean * scale
        return x * scale[:, None, None] + shift[:, None, None]


class ConvNet(nn.Module):
    """Four conv-BN-ReLU blocks and a linear head: ``(n, 1, 28, 28)`` → ``(n, n_way)`` logits.

    Args:
        n_way: classes per episode (outputs of the head).
        channels: input channels (1 for Omniglot).
        hidden: filters per convolution (64 in the papers).
        downsample: ``"stride"`` (stride-2 convolutions, MAML's Omniglot network) or
            ``"maxpool"`` (stride-1 convolutions, then 2×2 max-pooling).
        transductive_bn: batch norm with the statistics of each batch, always (the
            paper); False keeps running statistics (:class:`RunningBatchNorm2d`), updated by
            :meth:`update_running_stats` and used in eval mode.
    """

    def __init__(
        self,
        n_way: int,
        *,
        channels: int = 1,
        hidden: int = 64,
        downsample: str = "stride",
        transductive_bn: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("n_way", n_way), ("channels", channels), ("hidden", hidden)):
            checks.count(name, value, 1)
        if downsample not in ("stride", "maxpool"):
            raise ValueError(f"downsample={downsample!r} must be 'stride' or 'maxpool'.")
        self.n_way, self.downsample, self.transductive_bn = n_way, downsample, transductive_bn
        norm = TransductiveBatchNorm2d if transductive_bn else RunningBatchNorm2d
        blocks: list[nn.Module] = []
        for i in range(4):
            stride = 2 if downsample == "stride" else 1
            blocks += [
                nn.Conv2d(channels if i == 0 else hidden, hidden, 3, stride=stride, padding=1),
                norm(hidden),
                nn.ReLU(),
            ]
            if downsample == "maxpool":
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(hidden, n_way)

    def head_names(self) -> tuple[str, ...]:
        """Names of the head's parameters (what ANIL adapts)."""
        return ("head.weight", "head.bias")

    @torch.no_grad()
    def update_running_stats(self, params: dict[str, Tensor], x: Tensor) -> None:
        """Let every :class:`RunningBatchNorm2d` observe its input for images ``x``.

        Runs the network with ``params`` in train mode (batch statistics) on the
        ``(n, channels, 28, 28)`` images; does nothing if ``transductive_bn``.
        """
        layers = [m for m in self.modules() if isinstance(m, RunningBatchNorm2d)]
        hooks = [
            m.register_forward_pre_hook(lambda m, inputs: m.observe(inputs[0])) for m in layers
        ]
        mode = self.training
        try:
            self.train()
            functional_call(self, params, (x,))
        finally:
            self.train(mode)
            for hook in hooks:
                hook.remove()

    def forward(self, x: Tensor) -> Tensor:
        """Map ``(n, channels, 28, 28)`` images to ``(n, n_way)`` logits."""
        features = self.features(x)  # (n, hidden, 2, 2) for 28×28 inputs
        return self.head(features.mean(dim=(-2, -1)))  # (n, n_way)


class ConvEmbedding(nn.Module):
    """Four conv-BN-ReLU-maxpool blocks: ``(n, channels, 28, 28)`` → ``(n, hidden)``.

    Args:
        channels: input channels (1 for Omniglot).
        hidden: filters per convolution, and the embedding's size (64 in the papers).

    The spatial size goes 28 → 14 → 7 → 3 → 1, so the output needs no pooling.
    """

    def __init__(self, *, channels: int = 1, hidden: int = 64) -> None:
        super().__init__()
        checks.count("channels", channels, 1)
        self.hidden = checks.count("hidden", hidden, 1)
        blocks: list[nn.Module] = []
        for i in range(4):
            blocks += [
                nn.Conv2d(channels if i == 0 else hidden, hidden, 3, padding=1),
                nn.BatchNorm2d(hidden),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        # Channels-last tensors run the convolutions about twice as fast on a CPU (and
        # suit a GPU's tensor cores); the numbers are the same.
        self.features = nn.Sequential(*blocks).to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``(..., channels, 28, 28)`` images as ``(..., hidden)`` vectors."""
        if x.shape[-2:] != (28, 28):
            raise ValueError(f"images must be 28×28, got {tuple(x.shape[-2:])}.")
        lead = x.shape[:-3]
        x = x.reshape(-1, *x.shape[-3:]).contiguous(memory_format=torch.channels_last)
        out = self.features(x)  # (n, hidden, 1, 1)
        return out.reshape(*lead, -1)  # (..., hidden)


def parameters_of(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters as the dict that :func:`metalib.algorithms.maml.adapt` takes."""
    return {name: p for name, p in model.named_parameters()}


def clone_parameters(params: dict[str, Tensor], *, requires_grad: bool = True) -> dict[str, Tensor]:
    """Detached copies of ``params`` that are leaves of a new graph."""
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in params.items()}


__all__ = [
    "ConvEmbedding",
    "ConvNet",
    "RunningBatchNorm2d",
    "SinusoidMLP",
    "TransductiveBatchNorm2d",
    "clone_parameters",
    "parameters_of",
]
