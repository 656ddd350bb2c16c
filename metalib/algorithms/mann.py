"""Memory-augmented neural networks for one-shot classification (Santoro et al. 2016).

A black-box learner reads an episode as a *sequence*: at step :math:`t` it sees image
:math:`x_t` together with the correct label of the *previous* step, :math:`y_{t-1}`, and
must predict :math:`y_t`. Labels are shuffled per episode, so the only way to be right on
the second sight of a class is to have stored the first sight's image with the label
that arrived one step later. Nothing is optimised at test time: learning happens in the
network's state.

The network here follows the paper's design on a convolutional front end:

- each image goes through the four-block embedding of chapter 07 (64-d);
- an LSTM controller reads ``[embedding, one-hot previous label]``;
- with ``memory_slots > 0``, an external memory with *least recently used access*
  (LRUA, section 3.2): the controller emits ``reads`` keys; read weights are a softmax of
  cosine similarities between key and memory rows; write weights interpolate, with a
  learned gate, between the previous read weights and the least used slot; usage decays
  by ``gamma`` each step. With ``memory_slots=0`` it is the paper's LSTM baseline.

The output layer maps ``[controller state, read vectors]`` to ``n_way`` logits.
Taught in ``notebooks/08_model_based.ipynb``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metalib import checks
from metalib.models import ConvEmbedding


class MANN(nn.Module):
    """A recurrent learner with an optional LRUA memory.

    Args:
        n_way: classes per episode (the width of the label input and of the output).
        hidden: LSTM controller units (the paper: 200).
        memory_slots / memory_width: rows and columns of the memory (the paper: 128 x 40);
            ``memory_slots=0`` leaves the memory out.
        reads: read heads (the paper: 4).
        gamma: usage decay (the paper: 0.95).
        frozen_embedding: keep the convolutional embedding fixed: its parameters get no
            gradient and it stays in eval mode (running batch-norm statistics) whatever
            mode the rest of the network is in. For an embedding loaded from a trained
            ProtoNet (``mann-omniglot --embedding``). The paper has no separate embedding: its
            controller reads the pixels, and everything is learned together.
    """

    def __init__(
        self,
        *,
        n_way: int = 5,
        hidden: int = 200,
        memory_slots: int = 128,
        memory_width: int = 40,
        reads: int = 4,
        gamma: float = 0.95,
        frozen_embedding: bool = False,
    ) -> None:
        super().__init__()
        checks.count("n_way", n_way, 2)
        checks.count("hidden", hidden, 1)
        checks.count("memory_slots", memory_slots, 0)
        checks.count("memory_width", memory_width, 1)
        checks.count("reads", reads, 1)
        if memory_slots and memory_slots < reads:
            raise ValueError(f"memory_slots={memory_slots} must be 0 or at least reads={reads}.")
        if not 0 < gamma < 1:
            raise ValueError(f"gamma={gamma!r} must lie strictly between 0 and 1.")
        self.n_way, self.slots, self.width, self.reads, self.gamma = (
            n_way,
            memory_slots,
            memory_width,
            reads,
            gamma,
        )
        self.embedding = ConvEmbedding()
        self.frozen_embedding = frozen_embedding
        if frozen_embedding:
            self.embedding.requires_grad_(False)
            self.embedding.eval()
        self.controller = nn.LSTMCell(64 + n_way, hidden)
        read_size = reads * memory_width if memory_slots else 0
        if memory_slots:
            self.keys = nn.Linear(hidden, reads * memory_width)
            self.write_gate = nn.Linear(hidden, reads)
        self.output = nn.Linear(hidden + read_size, n_way)

    def train(self, mode: bool = True) -> MANN:
        """Set the training mode; a frozen embedding stays in eval mode."""
        super().train(mode)
        if self.frozen_embedding:
            self.embedding.eval()
        return self

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Logits for every step of a batch of sequences.

        Args:
            x: images ``(tasks, steps, 1, 28, 28)``.
            y: their labels ``(tasks, steps)`` in ``0..n_way-1``; step ``t`` sees only
                ``y[:, :t]`` (shifted by one, the first step sees zeros).

        Returns:
            ``(tasks, steps, n_way)``: the prediction at each step before its label is shown.
        """
        if x.ndim != 5 or x.shape[:2] != y.shape:
            raise ValueError(
                f"x must be (tasks, steps, 1, 28, 28) and y (tasks, steps); got "
                f"{tuple(x.shape)} and {tuple(y.shape)}."
            )
        if y.numel() and (y.min() < 0 or y.max() >= self.n_way):
            raise ValueError(
                f"labels must lie in 0..{self.n_way - 1} for this {self.n_way}-way MANN."
            )
        tasks, steps = y.shape
        features = self.embedding(x)  # (tasks, steps, 64)
        previous = F.one_hot(y, self.n_way).to(features.dtype)  # (tasks, steps, n_way)
        previous = torch.cat([previous.new_zeros(tasks, 1, self.n_way), previous[:, :-1]], dim=1)
        inputs = torch.cat([features, previous], dim=-1)  # (tasks, steps, 64 + n_way)
        h = c = inputs.new_zeros(tasks, self.controller.hidden_size)
        state = self._initial_memory(tasks, inputs) if self.slots else None
        out = []
        for t in range(steps):
            h, c = self.controller(inputs[:, t], (h, c))  # (tasks, hidden)
            if state is None:
                out.append(self.output(h))
                continue
            read, state = self._memory_step(h, state)  # (tasks, reads * width)
            out.append(self.output(torch.cat([h, read], dim=-1)))
        return torch.stack(out, dim=1)  # (tasks, steps, n_way)

    def _initial_memory(self, tasks: int, like: Tensor) -> dict[str, Tensor]:
        zeros = like.new_zeros
        return {
            "memory": zeros(tasks, self.slots, self.width).fill_(1e-6),  # (tasks, N, M)
            "usage": zeros(tasks, self.slots),  # (tasks, N)
            "read_weights": zeros(tasks, self.reads, self.slots),  # (tasks, R, N)
        }

    def _memory_step(self, h: Tensor, state: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """One LRUA write then read (Santoro et al. 2016, eqs. 5-8)."""
        memory, usage, read_prev = state["memory"], state["usage"], state["read_weights"]
        tasks = h.shape[0]
        keys = torch.tanh(self.keys(h)).view(tasks, self.reads, self.width)  # (tasks, R, M)
        gate = torch.sigmoid(self.write_gate(h))[..., None]  # (tasks, R, 1)
        # The least used slots at the previous step: one-hot rows (no gradient through it).
        least = usage.topk(self.reads, dim=-1, largest=False).indices  # (tasks, R)
        least_used = F.one_hot(least, self.slots).to(h.dtype)  # (tasks, R, N)
        write = gate * read_prev + (1 - gate) * least_used  # (tasks, R, N)
        # Clear the single least used slot, then add the keys where the heads write.
        cleared = memory * (1 - least_used[:, :1].transpose(1, 2))  # (tasks, N, M)
        memory = cleared + write.transpose(1, 2) @ keys  # (tasks, N, M)
        similarity = F.cosine_similarity(keys[:, :, None], memory[:, None], dim=-1, eps=1e-8)
        read_weights = similarity.softmax(dim=-1)  # (tasks, R, N)
        usage = self.gamma * usage + read_weights.sum(1) + write.sum(1)  # (tasks, N)
        read = (read_weights @ memory).flatten(1)  # (tasks, R * M)
        return read, {"memory": memory, "usage": usage, "read_weights": read_weights}


def instance_numbers(y: Tensor) -> Tensor:
    """For each step, how many times its class has been shown so far, counting it: 1, 2, ...

    ``(tasks, steps) -> (tasks, steps)``. Santoro et al. report accuracy by this number.
    """
    same = y[:, :, None] == y[:, None, :]  # (tasks, steps, steps)
    earlier_or_now = torch.ones_like(same[0]).tril()  # (steps, steps)
    return (same & earlier_or_now).sum(-1)


def shuffle_sequences(x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Each task's images and labels in its own random order (the same order for both)."""
    tasks, steps = y.shape
    order = torch.rand(tasks, steps, generator=generator, device=generator.device).argsort(-1)
    order = order.to(y.device)  # (tasks, steps)
    x_order = order.view(tasks, steps, *([1] * (x.ndim - 2))).expand_as(x)
    return x.gather(1, x_order), y.gather(1, order)


__all__ = ["MANN", "instance_numbers", "shuffle_sequences"]
