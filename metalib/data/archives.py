"""The Omniglot archives: where they are, their checksums, their download, their content.

Omniglot (Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through
probabilistic program induction", Science 2015) ships as two zips in
https://github.com/brendenlake/omniglot: ``images_background.zip`` (30 alphabets, 964
characters) and ``images_evaluation.zip`` (20 alphabets, 659 characters), each character
drawn once by each of 20 people as a 105×105 black-and-white PNG named
``ALPHABET/characterNN/XXXX_YY.png`` (XXXX: character ID, YY: drawer).

An archive is accepted when its md5 is the published one, or, for copies rebuilt with the
same pixels but other bytes, when its content passes :func:`inspect`: the alphabet,
character and image counts above, and 20 drawers per character (image sizes are checked
when the images are decoded, in :mod:`metalib.data.omniglot`). Archive member names are
only ever parsed, never used as filesystem paths. Taught in ``05_omniglot_episodes``.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from metalib import files

BASE_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
MEMBER = re.compile(
    r"^(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<character>[^/]+)/(?P<id>\d{4})_(?P<drawer>\d{2})\.png$"
)
CORRUPT = (zipfile.BadZipFile, zlib.error, EOFError, OSError)


@dataclass(frozen=True)
class ArchiveSpec:
    """What one Omniglot archive must contain, and where the official copy lives."""

    name: str  # the top folder and the file stem, e.g. "images_background"
    url: str
    md5: str | None  # None: no published checksum (test archives)
    alphabets: int
    characters: int
    images: int
    drawers: int = 20
    image_size: int = 105

    @property
    def filename(self) -> str:
        return f"{self.name}.zip"


BACKGROUND = ArchiveSpec(
    "images_background",
    BASE_URL + "images_background.zip",
    "68d2efa1b9178cc56df9314c21c6e718",
    alphabets=30,
    characters=964,
    images=19_280,
)
EVALUATION = ArchiveSpec(
    "images_evaluation",
    BASE_URL + "images_evaluation.zip",
    "6b91aef0f799c5bb55b94e3f2daec811",
    alphabets=20,
    characters=659,
    images=13_180,
)
OFFICIAL = (BACKGROUND, EVALUATION)


@dataclass(frozen=True)
class Member:
    """One image of an archive: its name inside the zip and what the name says."""

    name: str
    alphabet: str
    character: str  # "ALPHABET/characterNN", the class name the split files use
    drawer: int  # 0..19


def download(url: str, target: Path, *, md5: str | None) -> Path:
    """Download ``url`` to ``target``, renamed into place only once its md5 matches.

    Raises:
        FileNotFoundError: if the download fails (no network, wrong address).
        ValueError: if the downloaded bytes do not have the expected md5.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.md5()

    def chunks(response):
        while block := response.read(1 << 20):
            hasher.update(block)
            yield block

    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            tmp = files.write_temporary(target, chunks(response))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise FileNotFoundError(f"downloading {url} failed ({error}).") from error
    if md5 is not None and hasher.hexdigest() != md5:
        tmp.unlink(missing_ok=True)
        raise ValueError(
            f"the download of {url} has md5 {hasher.hexdigest()}, not the published {md5}: "
            "nothing was saved; try again, or download the file yourself."
        )
    os.replace(tmp, target)
    return target


def locate(spec: ArchiveSpec, data_dir: Path, *, download_missing: bool = True) -> Path:
    """The path of ``spec``'s archive in ``data_dir``, downloading it there if absent.

    Raises:
        FileNotFoundError: if it is absent and cannot be downloaded; the message says
            where it looked and how to get the file.
    """
    path = data_dir / spec.filename
    if path.is_file():
        return path
    how = (
        f"Download {spec.url} into {data_dir}, or set METALIB_DATA to the folder that "
        f"holds {spec.filename}."
    )
    if not download_missing:
        raise FileNotFoundError(f"Omniglot archive {spec.filename} not found in {data_dir}. {how}")
    try:
        return download(spec.url, path, md5=spec.md5)
    except (FileNotFoundError, OSError) as error:
        raise FileNotFoundError(
            f"Omniglot archive {spec.filename} not found in {data_dir}, and {error} {how}"
        ) from error


def open_archive(path: Path) -> zipfile.ZipFile:
    """Open a zip, turning a truncated or corrupted file into a clear ``ValueError``."""
    try:
        return zipfile.ZipFile(path)
    except CORRUPT as error:
        raise ValueError(
            f"archive {path} is corrupted or truncated ({error}): delete it and run again to "
            "download a fresh copy."
        ) from error


def members(archive: zipfile.ZipFile, spec: ArchiveSpec, path: Path) -> list[Member]:
    """The archive's images, sorted by alphabet, character and drawer.

    Directory entries, ``__MACOSX/`` and hidden files are skipped; any other member that
    is not ``<top>/ALPHABET/characterNN/XXXX_YY.png`` is an error.
    """
    found = []
    for info in archive.infolist():
        name = info.filename
        if info.is_dir() or name.startswith("__MACOSX/") or name.rsplit("/", 1)[-1][:1] == ".":
            continue
        match = MEMBER.match(name)
        if match is None or match["top"] != spec.name:
            raise ValueError(
                f"archive {path} holds {name!r}, which is not "
                f"{spec.name}/ALPHABET/characterNN/XXXX_YY.png: is it an Omniglot archive?"
            )
        alphabet = match["alphabet"]
        drawer = int(match["drawer"])
        if not 1 <= drawer <= spec.drawers:
            raise ValueError(
                f"archive {path}: {name!r} names drawer {drawer}, not 1..{spec.drawers}."
            )
        found.append(Member(name, alphabet, f"{alphabet}/{match['character']}", drawer - 1))
    return sorted(found, key=lambda m: (m.character, m.drawer))


def inspect(path: Path, spec: ArchiveSpec) -> dict:
    """Check an archive's content against ``spec``; return its counts and md5.

    Returns:
        ``{"path", "md5", "official_md5", "alphabets", "characters", "images"}``, where
        ``official_md5`` says whether the bytes are the published archive's.

    Raises:
        ValueError: if the archive is corrupted, or its counts or drawers are not the
            published ones.
    """
    md5 = files.digest(path, "md5")
    with open_archive(path) as archive:
        found = members(archive, spec, path)
    counts = {
        "alphabets": len({m.alphabet for m in found}),
        "characters": len({m.character for m in found}),
        "images": len(found),
    }
    expected = {"alphabets": spec.alphabets, "characters": spec.characters, "images": spec.images}
    if counts != expected:
        raise ValueError(
            f"archive {path} holds {counts}, but {spec.filename} must hold {expected}: "
            f"it is incomplete or not Omniglot; replace it with {spec.url}."
        )
    drawers: dict[str, set[int]] = {}
    for m in found:
        drawers.setdefault(m.character, set()).add(m.drawer)
    for character, seen in drawers.items():
        if len(seen) != spec.drawers:
            raise ValueError(
                f"archive {path}: character {character} has {len(seen)} distinct drawers, "
                f"not {spec.drawers}; replace the archive with {spec.url}."
            )
    return {"path": str(path), "md5": md5, "official_md5": md5 == spec.md5, **counts}
