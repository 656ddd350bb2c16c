"""Networks used in the course.

``SinusoidMLP`` is the regression network of MAML (Finn et al. 2017, section 5.1): two
hidden layers of 40 units with ReLU, 1 input, 1 output. Taught in
``notebooks/02_maml_sinusoid.ipynb``. Models are plain ``nn.Module``s; algorithms run them
through ``torch.func.functional_call`` with a parameter dict.
"""

from __future__ import annotations

import itertools

from torch import Tensor, nn


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


def parameters_of(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters as the dict that :func:`metalib.algorithms.maml.adapt` takes."""
    return {name: p for name, p in model.named_parameters()}


def clone_parameters(params: dict[str, Tensor], *, requires_grad: bool = True) -> dict[str, Tensor]:
    """Detached copies of ``params`` that are leaves of a new graph."""
    return {k: v.detach().clone().requires_grad_(requires_grad) for k, v in params.items()}


__all__ = ["SinusoidMLP", "clone_parameters", "parameters_of"]
