"""Checkpoints: a ``.pt`` of tensors plus a human-readable ``.json`` sidecar.

The ``.pt`` holds the recipe name, its configuration and the model's ``state_dict``,
and is read back with ``torch.load(weights_only=True)``. The sidecar records the
hyperparameters, metrics, device, wall time, the exact command that made the checkpoint,
the library version and the SHA-256 of the ``.pt``, which :func:`load` checks. Both files
are written to temporary names and renamed only when both are complete, so a failed save
leaves any previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

import metalib
from metalib import files, runtime

FORMAT = 1


def paths(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(PATH.pt, PATH.json)`` for ``PATH``, ``PATH.pt`` or ``PATH.json``."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in {".pt", ".json"} else p
    return stem.with_name(stem.name + ".pt"), stem.with_name(stem.name + ".json")


def shipped() -> list[str]:
    """Names of the checkpoints in ``data/checkpoints`` (each has a ``.pt`` and a ``.json``)."""
    folder = runtime.checkpoint_dir()
    return sorted(p.stem for p in folder.glob("*.pt") if p.with_suffix(".json").is_file())


def path_of(name_or_path: str | os.PathLike[str]) -> Path:
    """The ``.pt`` path of ``name_or_path``: a path (``PATH``, ``PATH.pt``, ``PATH.json``),
    a checkpoint ``NAME.pt`` here, or else a shipped name (``"sinusoid_maml"``)."""
    text = os.fspath(name_or_path)
    local = paths(text)[0]
    if os.sep in text or text.endswith((".pt", ".json")) or local.is_file():
        return local
    path = runtime.checkpoint_dir() / f"{text}.pt"
    if not path.is_file():
        raise FileNotFoundError(
            f"no shipped checkpoint named {text!r}; shipped: {shipped()}. Give a PATH.pt for "
            "your own."
        )
    return path


def save(
    path: str | os.PathLike[str],
    *,
    recipe: str,
    config: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    metrics: dict[str, Any] | None = None,
    device: str = "cpu",
    wall_time_s: float | None = None,
    command: str | None = None,
) -> tuple[Path, Path]:
    """Save a checkpoint as ``PATH.pt`` and ``PATH.json``, atomically.

    Raises:
        FileNotFoundError: if the directory of ``path`` does not exist.
    """
    pt_path, json_path = paths(path)
    if not pt_path.parent.is_dir():
        raise FileNotFoundError(
            f"cannot save checkpoint {pt_path}: directory {pt_path.parent} does not exist."
        )
    buffer = io.BytesIO()
    tensors = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    torch.save(
        {"format": FORMAT, "recipe": recipe, "config": config, "state_dict": tensors}, buffer
    )
    payload = buffer.getvalue()
    sidecar = {
        "format": FORMAT,
        "recipe": recipe,
        "config": config,
        "metrics": metrics or {},
        "device": device,
        "wall_time_s": wall_time_s,
        "command": command,
        "metalib_version": metalib.__version__,
        "torch_version": torch.__version__,
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    tmp_pt = files.write_temporary(pt_path, payload)
    try:
        tmp_json = files.write_temporary(json_path, text.encode())
    except BaseException:
        tmp_pt.unlink(missing_ok=True)
        raise
    os.replace(tmp_pt, pt_path)
    os.replace(tmp_json, json_path)
    return pt_path, json_path


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint."""
    _, json_path = paths(path)
    if not json_path.is_file():
        raise FileNotFoundError(
            f"checkpoint sidecar {json_path} not found: retrain with `python -m metalib train`."
        )
    try:
        sidecar = json.loads(json_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"checkpoint sidecar {json_path} is not JSON ({error}): restore it with its .pt "
            "from where it came, or retrain with `python -m metalib train`."
        ) from error
    if not isinstance(sidecar, dict) or "recipe" not in sidecar:
        raise ValueError(
            f"{json_path} is not a metalib checkpoint sidecar (no recipe): retrain with "
            "`python -m metalib train`."
        )
    return sidecar


def load(path: str | os.PathLike[str], *, recipe: str | None = None) -> dict[str, Any]:
    """Load a checkpoint saved by :func:`save` and check it against its sidecar.

    Args:
        path: ``PATH``, ``PATH.pt`` or ``PATH.json``.
        recipe: if given, the recipe the checkpoint must have been made by.

    Returns:
        ``{"recipe", "config", "state_dict", "sidecar"}``.

    Raises:
        FileNotFoundError: if the ``.pt`` or ``.json`` file is missing.
        ValueError: if the files do not belong together, are corrupt, or come from
            another recipe.
    """
    pt_path, json_path = paths(path)
    if not pt_path.is_file():
        raise FileNotFoundError(
            f"checkpoint {pt_path} not found: train one with "
            "`python -m metalib train <recipe> --out PATH`."
        )
    sidecar = read_sidecar(path)
    payload = pt_path.read_bytes()
    digest = hashlib.sha256(payload).hexdigest()
    if digest != sidecar.get("sha256"):
        raise ValueError(
            f"checkpoint {pt_path} does not match its sidecar {json_path} (sha256 {digest[:12]}… "
            f"vs {str(sidecar.get('sha256'))[:12]}…): save it again, as a pair."
        )
    try:
        blob = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt files
        raise ValueError(
            f"checkpoint {pt_path} cannot be read ({error}): retrain it with "
            "`python -m metalib train`."
        ) from error
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "recipe" not in blob:
        raise ValueError(
            f"checkpoint {pt_path} is not a metalib checkpoint of format {FORMAT}: retrain it "
            "with `python -m metalib train`."
        )
    if recipe is not None and blob["recipe"] != recipe:
        raise ValueError(
            f"checkpoint {pt_path} was made by recipe {blob['recipe']!r}, not {recipe!r}."
        )
    return {**blob, "sidecar": sidecar}
