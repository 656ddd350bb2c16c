"""Omniglot class splits, with rotations as new classes.

Two schemes, both used in the literature and both documented in docs/data.md:

- ``"vinyals"`` (Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016,
  as released by Snell et al. with Prototypical Networks): 1,028 train + 172 val
  characters and 423 test characters, drawn from all 50 alphabets, read from
  ``splits/vinyals/{train,val,trainval,test}.txt`` beside the archives (downloaded from
  the Prototypical Networks repository, md5-checked, when absent).
- ``"lake"`` (Lake et al., Science 2015): the 964 characters of the 30 background
  alphabets for training and the 659 of the 20 evaluation alphabets for testing; no
  validation split and no extra files.

With ``rotations=True`` (the default, as in both papers' few-shot protocol) every
character rotated by 0, 90, 180 and 270 degrees is a class of its own, so a split has
four times as many classes as characters. Taught in ``05_omniglot_episodes``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from metalib import files
from metalib.data import archives
from metalib.data.omniglot import Omniglot

SCHEMES = ("vinyals", "lake")
SPLITS = {"vinyals": ("train", "val", "trainval", "test"), "lake": ("train", "test")}
SPLIT_URL = (
    "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/"
    "data/omniglot/splits/vinyals/{split}.txt"
)
SPLIT_MD5 = {
    "train": "433d1fcc2b20dcee2983ceb524586f7f",
    "val": "78c535fa427b12b6596908376a0b3f34",
    "trainval": "888433268015439fd05fb6e9006ead50",
    "test": "43534e6d5f9e74acbb7de1b4874abad8",
}
LINE = re.compile(r"^(?P<character>[^/]+/[^/]+)/rot(?P<degrees>000|090|180|270)$")


@dataclass(frozen=True)
class ClassSplit:
    """The classes of one split: class ``c`` is character ``characters[c]`` turned by
    ``rotations[c]`` quarter turns counter-clockwise."""

    scheme: str
    split: str
    characters: torch.Tensor  # (classes,) int64 index into Omniglot.character_names
    rotations: torch.Tensor  # (classes,) int64 in 0..3

    def __len__(self) -> int:
        return len(self.characters)


def split_file(data_dir: Path, split: str, *, download: bool = True) -> Path:
    """``splits/vinyals/<split>.txt`` under ``data_dir``, downloaded there if absent."""
    path = data_dir / "splits" / "vinyals" / f"{split}.txt"
    if path.is_file():
        return path
    url = SPLIT_URL.format(split=split)
    how = f"Download {url} to {path}, or set METALIB_DATA to the folder that holds splits/."
    if not download:
        raise FileNotFoundError(f"Vinyals split file {path} not found. {how}")
    try:
        return archives.download(url, path, md5=SPLIT_MD5[split])
    except OSError as error:
        raise FileNotFoundError(
            f"Vinyals split file {path} not found, and {error} {how}"
        ) from error


def read_split_file(path: Path, names: tuple[str, ...]) -> list[tuple[int, int]]:
    """``(character index, quarter turns)`` for each line of a Vinyals split file."""
    index = {name: i for i, name in enumerate(names)}
    classes = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        match = LINE.match(line.strip())
        if match is None:
            raise ValueError(
                f"{path} line {number} is {line!r}, not ALPHABET/characterNN/rotDDD: "
                "delete the file to download it again."
            )
        if match["character"] not in index:
            raise ValueError(
                f"{path} line {number} names {match['character']!r}, which is not in the "
                "Omniglot archives: are the archives complete?"
            )
        classes.append((index[match["character"]], int(match["degrees"]) // 90))
    if len(set(classes)) != len(classes):
        raise ValueError(f"{path} lists a class twice: delete the file to download it again.")
    return classes


def class_split(
    dataset: Omniglot,
    *,
    scheme: str = "vinyals",
    split: str = "train",
    rotations: bool = True,
    download: bool = True,
) -> ClassSplit:
    """The classes of ``split`` under ``scheme``.

    Args:
        dataset: from :func:`metalib.data.omniglot.load`.
        scheme: ``"vinyals"`` or ``"lake"``.
        split: ``"train"``, ``"val"``, ``"trainval"`` or ``"test"`` for vinyals;
            ``"train"`` or ``"test"`` for lake.
        rotations: four classes per character (0/90/180/270°), as in the papers.
        download: fetch missing Vinyals split files.

    Raises:
        ValueError: unknown scheme or split, or a split file that does not fit the data.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme={scheme!r} is not one of {SCHEMES}.")
    if split not in SPLITS[scheme]:
        hint = " (lake has no validation classes: use scheme='vinyals')" if scheme == "lake" else ""
        raise ValueError(f"split={split!r} is not one of {SPLITS[scheme]} for {scheme}{hint}.")
    if scheme == "vinyals":
        pairs = read_split_file(
            split_file(dataset.data_dir, split, download=download), dataset.character_names
        )
        if not rotations:
            pairs = [(c, r) for c, r in pairs if r == 0]
    else:
        wanted = split == "train"
        chosen = [c for c, bg in enumerate(dataset.background) if bg == wanted]
        pairs = [(c, r) for c in chosen for r in (range(4) if rotations else (0,))]
    characters, turns = zip(*pairs, strict=True) if pairs else ((), ())
    return ClassSplit(
        scheme,
        split,
        torch.tensor(characters, dtype=torch.long),
        torch.tensor(turns, dtype=torch.long),
    )


def summary(dataset: Omniglot, classes: ClassSplit) -> dict[str, int]:
    """Alphabets, characters, classes (with rotations) and distinct images of a split."""
    characters = classes.characters.unique()
    alphabets = {dataset.character_names[c].split("/")[0] for c in characters.tolist()}
    return {
        "alphabets": len(alphabets),
        "characters": len(characters),
        "classes": len(classes),
        "images": len(characters) * dataset.drawers,
    }


def split_files_md5(data_dir: Path) -> dict[str, bool]:
    """Per Vinyals split file present in ``data_dir``: whether its md5 is the published one."""
    folder = data_dir / "splits" / "vinyals"
    return {
        split: files.digest(folder / f"{split}.txt") == md5
        for split, md5 in SPLIT_MD5.items()
        if (folder / f"{split}.txt").is_file()
    }
