"""Everything that reads the environment: quick mode, the data directory, the device.

This is the only module of ``metalib`` that looks at environment variables:

- ``METALIB_QUICK=1`` shrinks training budgets so that every notebook runs in about a
  minute on two CPU cores (read once, by :func:`quick`), validation checks included
  (``evaluation.validation_episodes``);
- ``METALIB_DATA`` is the data directory (default: ``data/`` at the repository root),
  where the Omniglot archives are found or downloaded to;
- ``METALIB_CACHE`` is where derived files such as the 28×28 Omniglot tensor are written
  (default: the data directory); set it when the data directory is read-only;
- ``METALIB_DEVICE`` overrides the automatic device choice (cuda, else cpu; Apple's ``mps``
  only when asked for, see :func:`device`);
- ``METALIB_BUDGET`` is ``full`` (train at the papers' budgets; the default on a CUDA
  machine) or ``demo`` (a short demonstration, then the shipped checkpoint; the default
  elsewhere). Quick mode shrinks both (see :func:`budget`).
"""

from __future__ import annotations

import functools
import os
import random
import sys
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


@functools.cache
def quick() -> bool:
    """Whether quick mode is on (``METALIB_QUICK``), read once per process."""
    value = os.environ.get("METALIB_QUICK", "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"METALIB_QUICK={value!r} is not a boolean: set it to 1 or 0.")


BUDGETS = ("demo", "full")


def budget(dev: torch.device | None = None) -> str:
    """``"full"`` or ``"demo"``: which branch the chapters' training cells take.

    ``METALIB_BUDGET`` if set; otherwise ``"full"`` on a CUDA device (``dev``, default
    :func:`device`) and ``"demo"`` elsewhere. Quick mode does not change the branch but
    always wins on sizes: the chapters shrink both branches' step counts under
    ``METALIB_QUICK=1``, which is how CI runs the full-budget cells on a CPU.

    Raises:
        ValueError: if ``METALIB_BUDGET`` is neither ``demo`` nor ``full``.
    """
    value = os.environ.get("METALIB_BUDGET", "").strip().lower()
    if value in BUDGETS:
        return value
    if value:
        raise ValueError(f"METALIB_BUDGET={value!r} is not a budget: set it to demo or full.")
    return "full" if (dev or device()).type == "cuda" else "demo"


def data_dir() -> Path:
    """The data directory: ``METALIB_DATA`` if set, otherwise ``data/`` in the repository."""
    value = os.environ.get("METALIB_DATA")
    return Path(value).expanduser() if value else REPO_ROOT / "data"


def cache_dir() -> Path:
    """Where derived data is cached: ``METALIB_CACHE`` if set, otherwise :func:`data_dir`."""
    value = os.environ.get("METALIB_CACHE")
    return Path(value).expanduser() if value else data_dir()


def checkpoint_dir() -> Path:
    """Where the shipped checkpoints live: ``<repository>/data/checkpoints``."""
    return REPO_ROOT / "data" / "checkpoints"


MPS_NOTE = (
    "metalib: an Apple GPU (mps) is here but is not chosen automatically: the course is tested "
    "on CPUs and CUDA only, and mps has no float64, which some checks use. Set "
    "METALIB_DEVICE=mps (or pass device='mps') to try it; the CPU is used now."
)
_mps_noted = False


def device(preference: str | torch.device | None = None) -> torch.device:
    """Choose a device: the preference, else ``METALIB_DEVICE``, else cuda, else cpu.

    Apple's ``mps`` is used only when asked for by name: nothing in the course is tested on
    it (no such machine runs its CI) and it has no float64. Where it is available and the
    choice is automatic, :data:`MPS_NOTE` is printed once per process to say so.

    Args:
        preference: ``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"`` (or a ``torch.device``),
            or None for automatic.

    Raises:
        ValueError: if the requested device is unknown or not available here.
    """
    global _mps_noted
    name = str(preference) if preference is not None else os.environ.get("METALIB_DEVICE")
    name = name or None
    if name is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available() and not _mps_noted:
            print(MPS_NOTE, file=sys.stderr)
            _mps_noted = True
        return torch.device("cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"device {name!r} is not a device name: use cuda, mps or cpu.") from error
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available: use cpu.")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} requested but MPS is not available: use cpu.")
    return chosen


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and PyTorch, and return a CPU generator seeded the same way.

    Task samplers take an explicit generator; the global seeds only cover what does not
    (weight initialisation, for example).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer.")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def describe_device(dev: torch.device) -> str:
    """A human-readable name: the GPU model for cuda, otherwise the device type."""
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    if dev.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'' if threads == 1 else 's'})"
    return dev.type


def describe_parts(parts: list[list]) -> str:
    """Where a run's steps ran, from ``History.parts``: the one device, or each in turn.

    ``[["cuda (NVIDIA H200)", 12000], ["cpu (2 threads)", 8000]]`` gives
    ``"cuda (NVIDIA H200) for 12,000 steps, then cpu (2 threads) for 8,000 steps"``.
    """
    if len(parts) == 1:
        return parts[0][0]
    return ", then ".join(f"{device} for {steps:,} steps" for device, steps in parts)


def device_kinds(description: str) -> set[str]:
    """The device types in a sidecar's ``device`` (one from ``describe_device``, or several
    from ``describe_parts``), e.g. ``{"cuda", "cpu"}``."""
    return {part.split(" ")[0] for part in description.split(", then ")}


def cpu_times(stat: str | os.PathLike[str] = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) CPU time in clock ticks since boot, from Linux's /proc/stat; else None.

    Steal is time the hypervisor gave this machine's CPUs to other guests: on a shared
    2-core VM it is what makes one run of the same training 30% slower than another.
    """
    try:
        first = Path(stat).read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    ticks = [int(v) for v in first[1:9]]  # user nice system idle iowait irq softirq steal
    return (ticks[7] if len(ticks) == 8 else 0), sum(ticks)


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The fraction of CPU time stolen between two :func:`cpu_times` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])
