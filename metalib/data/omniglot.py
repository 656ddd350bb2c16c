"""Omniglot as one uint8 tensor: read from the zips once, resized to 28×28, cached.

:func:`load` finds (or downloads) both archives, checks them (:mod:`.archives`), decodes
every PNG straight from the zip with Pillow, resizes it to 28×28 with torchvision's
antialiased bilinear resize,
and caches the result as ``omniglot_28x28.pt`` in the cache directory (``METALIB_CACHE``,
by default the data directory). The cache records the md5 of the archives it came from
and is rebuilt when they change. Ink is 255 and background 0 (the PNGs are the other way
round), so a blank image is all zeros. Taught in ``05_omniglot_episodes``.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metalib import files, runtime
from metalib.data import archives
from metalib.data.archives import ArchiveSpec

CACHE_NAME = "omniglot_28x28.pt"
CACHE_FORMAT = 1
IMAGE_SIZE = 28
_CHUNK = 2048  # images resized at a time


@dataclass(frozen=True)
class Omniglot:
    """Every Omniglot image at 28×28, with its index.

    Images are sorted by archive (background first), alphabet, character and drawer, so
    ``images.view(characters, drawers, 28, 28)`` groups them by character.
    """

    images: torch.Tensor  # (images, 28, 28) uint8, ink 255
    alphabet: torch.Tensor  # (images,) int64 index into alphabet_names
    character: torch.Tensor  # (images,) int64 index into character_names
    drawer: torch.Tensor  # (images,) int64, 0..drawers-1
    alphabet_names: tuple[str, ...]
    character_names: tuple[str, ...]  # "ALPHABET/characterNN", as in the split files
    background: tuple[bool, ...]  # per character: from images_background?
    data_dir: Path
    cache_path: Path
    sources: dict  # per archive: path, md5, official_md5, counts

    @property
    def drawers(self) -> int:
        return len(self.images) // len(self.character_names)

    def by_character(self) -> torch.Tensor:
        """The images grouped by character: ``(characters, drawers, 28, 28)``, a view."""
        return self.images.view(len(self.character_names), self.drawers, *self.images.shape[1:])

    def character_index(self, name: str) -> int:
        """The index of ``"ALPHABET/characterNN"``."""
        try:
            return self.character_names.index(name)
        except ValueError:
            raise ValueError(
                f"character {name!r} is not in Omniglot: names look like "
                f"{self.character_names[0]!r}."
            ) from None


def _decode(archive, member: archives.Member, spec: ArchiveSpec, path: Path) -> np.ndarray:
    try:
        raw = archive.read(member.name)
    except archives.CORRUPT as error:
        raise ValueError(
            f"archive {path} is corrupted ({member.name}: {error}): delete it and run again to "
            "download a fresh copy."
        ) from error
    try:
        with Image.open(io.BytesIO(raw)) as image:
            pixels = np.asarray(image.convert("L"))  # (105, 105) uint8, background 255
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(
            f"archive {path}: {member.name} is not a readable image ({error}); replace the "
            f"archive with {spec.url}."
        ) from error
    if pixels.shape != (spec.image_size, spec.image_size):
        raise ValueError(
            f"archive {path}: {member.name} is {pixels.shape[1]}×{pixels.shape[0]} pixels, not "
            f"{spec.image_size}×{spec.image_size}; replace the archive with {spec.url}."
        )
    return pixels


def original_png(data: Omniglot, character: int, drawer: int = 0) -> tuple[str, bytes]:
    """The archive member name and PNG bytes of one drawing, as published (105x105).

    Raises:
        ValueError: if ``drawer`` is not one of the character's drawings.
    """
    archive_name = "images_background" if data.background[character] else "images_evaluation"
    with zipfile.ZipFile(data.data_dir / f"{archive_name}.zip") as archive:
        prefix = f"{archive_name}/{data.character_names[character]}/"
        members = sorted(
            n for n in archive.namelist() if n.startswith(prefix) and n.endswith(".png")
        )
        if not 0 <= drawer < len(members):
            raise ValueError(f"drawer={drawer} must lie in 0..{len(members) - 1} for {prefix}.")
        return members[drawer], archive.read(members[drawer])


def shrink(ink: torch.Tensor) -> torch.Tensor:
    """``(n, 1, H, W)`` uint8 ink images → ``(n, 28, 28)`` uint8 (antialiased bilinear)."""
    from torchvision.transforms.v2 import functional as TF  # a second to import: only here

    small = TF.resize(ink.float(), [IMAGE_SIZE, IMAGE_SIZE], antialias=True)
    return small.round().clamp(0, 255).to(torch.uint8)[:, 0]  # (n, 28, 28)


def image_to_tensor(image: Image.Image | str | os.PathLike[str]) -> torch.Tensor:
    """A character image as the models see it: ``(1, 28, 28)`` float in [0, 1], ink 1.

    The same steps as the dataset (:func:`load`) and the episodes: dark ink on a light
    background inverted, resized to 28×28 as the cache is, divided by 255. So an
    Omniglot PNG gives exactly its image in the episodes.

    Args:
        image: a PIL image or the path of an image file: 105×105 pixels (the size of the
            Omniglot PNGs), black and white (mode ``"1"``) or grayscale (``"L"``).

    Raises:
        FileNotFoundError: if a path does not exist.
        ValueError: for another size or mode, naming what to do.
    """
    if not isinstance(image, Image.Image):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image at {path}.")
        with Image.open(path) as opened:
            return image_to_tensor(opened.copy())
    if image.mode not in ("1", "L"):
        raise ValueError(
            f"image mode {image.mode!r} is not black and white ('1') or grayscale ('L'): "
            "convert it first with image.convert('L') (dark ink on a light background)."
        )
    size = archives.BACKGROUND.image_size
    if image.size != (size, size):
        raise ValueError(
            f"image is {image.size[0]}×{image.size[1]} pixels; Omniglot images are "
            f"{size}×{size}: crop it to a square and resize it, e.g. "
            f"image.resize(({size}, {size}))."
        )
    pixels = np.asarray(image.convert("L"))  # (105, 105) uint8, background 255
    ink = 255 - torch.from_numpy(pixels.copy())[None, None]  # (1, 1, 105, 105)
    return shrink(ink).float().div_(255)  # (1, 28, 28)


def _build(paths: Sequence[Path], specs: Sequence[ArchiveSpec]) -> dict:
    """Decode and resize every image of the archives; return the cache's content."""
    images, alphabet, character, drawer = [], [], [], []
    alphabet_names: list[str] = []
    character_names: list[str] = []
    background: list[bool] = []
    for path, spec in zip(paths, specs, strict=True):
        with archives.open_archive(path) as archive:
            found = archives.members(archive, spec, path)
            decoded = [_decode(archive, m, spec, path) for m in found]
        for m in found:
            if not alphabet_names or alphabet_names[-1] != m.alphabet:
                alphabet_names.append(m.alphabet)
            if not character_names or character_names[-1] != m.character:
                character_names.append(m.character)
                background.append(spec.name == archives.BACKGROUND.name)
            alphabet.append(len(alphabet_names) - 1)
            character.append(len(character_names) - 1)
            drawer.append(m.drawer)
        ink = 255 - torch.from_numpy(np.stack(decoded)).unsqueeze(1)  # (images, 1, 105, 105)
        images += [shrink(chunk) for chunk in ink.split(_CHUNK)]
    return {
        "images": torch.cat(images),
        "alphabet": torch.tensor(alphabet),
        "character": torch.tensor(character),
        "drawer": torch.tensor(drawer),
        "alphabet_names": alphabet_names,
        "character_names": character_names,
        "background": background,
    }


def _writable(cache_dir: Path) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise PermissionError(
            f"cannot create the cache directory {cache_dir} ({error}): set METALIB_CACHE to a "
            "writable folder."
        ) from error
    if not os.access(cache_dir, os.W_OK):
        raise PermissionError(
            f"the cache directory {cache_dir} is not writable: set METALIB_CACHE to a "
            "writable folder."
        )


def _read_cache(path: Path, fingerprint: dict) -> dict | None:
    """The cache's content if it exists, is readable and came from these archives."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises several types for truncated or foreign files
        return None
    if not isinstance(blob, dict) or blob.get("fingerprint") != fingerprint:
        return None
    return blob


def load(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    specs: Sequence[ArchiveSpec] = archives.OFFICIAL,
) -> Omniglot:
    """Load Omniglot at 28×28, building the cache the first time.

    Args:
        data_dir: where the archives are (default: ``METALIB_DATA``, else ``data/``).
        cache_dir: where ``omniglot_28x28.pt`` goes (default: ``METALIB_CACHE``, else
            the data directory).
        download: fetch missing archives from the official repository (md5-checked).
        specs: the archives and the counts they must have (tests pass small ones).

    Raises:
        FileNotFoundError: an archive is missing and cannot be downloaded.
        ValueError: an archive is corrupted, truncated, or has the wrong content.
        PermissionError: the cache directory cannot be written.
    """
    data_dir = Path(data_dir) if data_dir is not None else runtime.data_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else runtime.cache_dir()
    if not specs:
        raise ValueError("specs is empty: pass at least one ArchiveSpec (default: both archives).")
    paths = [archives.locate(spec, data_dir, download_missing=download) for spec in specs]
    sources = {
        spec.name: archives.inspect(path, spec) for path, spec in zip(paths, specs, strict=True)
    }
    fingerprint = {
        "format": CACHE_FORMAT,
        "size": IMAGE_SIZE,
        "md5": {name: source["md5"] for name, source in sources.items()},
    }
    cache_path = cache_dir / CACHE_NAME
    blob = _read_cache(cache_path, fingerprint)
    if blob is None:
        _writable(cache_dir)
        blob = {**_build(paths, specs), "fingerprint": fingerprint}
        buffer = io.BytesIO()
        torch.save(blob, buffer)
        try:
            files.atomic_write(cache_path, buffer.getvalue())
        except OSError as error:
            raise PermissionError(
                f"cannot write the cache {cache_path} ({error}): set METALIB_CACHE to a "
                "writable folder with 30 MB free."
            ) from error
    return Omniglot(
        images=blob["images"],
        alphabet=blob["alphabet"],
        character=blob["character"],
        drawer=blob["drawer"],
        alphabet_names=tuple(blob["alphabet_names"]),
        character_names=tuple(blob["character_names"]),
        background=tuple(blob["background"]),
        data_dir=data_dir,
        cache_path=cache_path,
        sources=sources,
    )
