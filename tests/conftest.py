"""Shared fixtures: small Omniglot-format archives made here, and the real data if present.

Tests never download anything. The generated archives have Omniglot's layout
(``images_background/ALPHABET/characterNN/XXXX_YY.png``, 20 drawers, 105×105 PNGs) but
only a few characters, each drawn as a filled rectangle whose place depends on the
character and the drawer, so images can be told apart after resizing.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from metalib.data import archives, omniglot
from metalib.runtime import REPO_ROOT

# Two archives: (alphabet, characters) per archive.
LAYOUT = {
    "images_background": (("Alpha", 3), ("Beta", 2)),
    "images_evaluation": (("Gamma", 2),),
}
SHARED_OMNIGLOT = REPO_ROOT.parent / "shared" / "data" / "omniglot"


def drawing(character: int, drawer: int, *, size: int = 105, seed: int = 0) -> torch.Tensor:
    """A 1-channel image with white background and one black rectangle: ``(1, size, size)``."""
    image = torch.full((1, size, size), 255, dtype=torch.uint8)
    top = 5 + 7 * (character % 6) + seed
    left = 5 + 3 * drawer
    image[:, top : top + 30, left : left + 20 + character] = 0
    return image


def png_bytes(image: torch.Tensor) -> bytes:
    """A 1-bit PNG of a ``(1, height, width)`` uint8 image, as Omniglot stores them."""
    buffer = io.BytesIO()
    Image.fromarray(image[0].numpy()).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def write_archive(
    path: Path, name: str, *, seed: int = 0, extra: dict[str, bytes] | None = None
) -> archives.ArchiveSpec:
    """Write a small Omniglot-format archive ``name`` to ``path``; return its spec."""
    layout = LAYOUT[name]
    first = 1 if name == "images_background" else 1 + sum(n for _, n in LAYOUT["images_background"])
    character_id = first
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{name}/", b"")
        for alphabet, characters in layout:
            for c in range(1, characters + 1):
                folder = f"{name}/{alphabet}/character{c:02d}"
                for drawer in range(1, 21):
                    png = png_bytes(drawing(character_id, drawer, seed=seed))
                    archive.writestr(f"{folder}/{character_id:04d}_{drawer:02d}.png", png)
                character_id += 1
        for member, data in (extra or {}).items():
            archive.writestr(member, data)
    characters = sum(n for _, n in layout)
    return archives.ArchiveSpec(
        name,
        url=f"file://{path.parent / 'server' / path.name}",
        md5=None,
        alphabets=len(layout),
        characters=characters,
        images=20 * characters,
    )


@pytest.fixture
def small_omniglot(tmp_path: Path) -> tuple[Path, tuple[archives.ArchiveSpec, ...]]:
    """A data directory with two small archives, and the specs that describe them."""
    data_dir = tmp_path / "omniglot"
    data_dir.mkdir()
    specs = tuple(write_archive(data_dir / f"{name}.zip", name) for name in LAYOUT)
    return data_dir, specs


@pytest.fixture(scope="session")
def real_omniglot(tmp_path_factory) -> omniglot.Omniglot:
    """The real Omniglot from ``../shared/data/omniglot``, cached in a temporary folder."""
    if not (SHARED_OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"the real Omniglot archives are not in {SHARED_OMNIGLOT}")
    cache = tmp_path_factory.mktemp("omniglot_cache")
    return omniglot.load(SHARED_OMNIGLOT, cache_dir=cache, download=False)
