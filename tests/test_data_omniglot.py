"""The 28×28 Omniglot tensor: built from generated archives, cached, rebuilt, refused."""

import dataclasses
import zipfile

import pytest
import torch
import torch.nn.functional as F

from metalib.data import omniglot
from tests.conftest import SHARED_OMNIGLOT, drawing, png_bytes, write_archive


def test_load_builds_images_and_index(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    data = omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    assert data.images.shape == (140, 28, 28) and data.images.dtype == torch.uint8
    assert data.alphabet_names == ("Alpha", "Beta", "Gamma")
    assert data.character_names[0] == "Alpha/character01" and len(data.character_names) == 7
    assert data.background == (True,) * 5 + (False,) * 2
    assert data.drawer.tolist() == list(range(20)) * 7
    assert data.character.tolist() == [c for c in range(7) for _ in range(20)]
    assert data.alphabet.tolist()[::20] == [0, 0, 0, 1, 1, 2, 2]
    assert data.by_character().shape == (7, 20, 28, 28)
    # Ink is 255: each image is the resized black rectangle of its character and drawer.
    expected = F.interpolate(
        (255 - drawing(3, 5)).float()[None], size=(28, 28), mode="bilinear", antialias=True
    )
    assert (data.by_character()[2, 4].float() - expected[0, 0]).abs().max() <= 1
    assert data.images[:, 0, 0].eq(0).all(), "the corner is background"
    assert (data.cache_path.parent / omniglot.CACHE_NAME).is_file()


def test_cache_is_reused(small_omniglot, tmp_path, monkeypatch):
    data_dir, specs = small_omniglot
    first = omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=specs)
    monkeypatch.setattr(omniglot, "_build", lambda *a: pytest.fail("the cache was rebuilt"))
    again = omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=specs)
    assert torch.equal(first.images, again.images)


def test_cache_is_rebuilt_when_an_archive_changes(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    before = omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=specs)
    write_archive(data_dir / "images_background.zip", "images_background", seed=9)
    after = omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=specs)
    assert not torch.equal(before.images[:100], after.images[:100])
    assert torch.equal(before.images[100:], after.images[100:])


def test_unreadable_cache_is_rebuilt(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    good = omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=specs)
    good.cache_path.write_bytes(good.cache_path.read_bytes()[:1000])
    assert torch.equal(
        omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=specs).images, good.images
    )


def test_missing_archive_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"images_background.zip not found in {tmp_path}"):
        omniglot.load(tmp_path, cache_dir=tmp_path, download=False)
    assert list(tmp_path.iterdir()) == []


def test_wrong_image_size_is_refused_and_no_cache_is_written(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    path = data_dir / "images_evaluation.zip"
    with zipfile.ZipFile(path) as archive:
        entries = {i.filename: archive.read(i) for i in archive.infolist()}
    entries["images_evaluation/Gamma/character01/0006_07.png"] = png_bytes(drawing(6, 7, size=100))
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"0006_07\.png is 100×100 pixels, not 105×105"):
        omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupted_member_is_refused_and_no_cache_is_written(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    path = data_dir / "images_background.zip"
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("images_background/Beta/character01/0004_10.png")
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    raw[start : start + 8] = bytes(8)  # break the compressed bytes; the central directory stays
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"corrupted \(images_background/Beta/character01/0004_10"):
        omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    assert list((tmp_path / "cache").iterdir()) == []


def test_wrong_counts_are_refused(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    wrong = (dataclasses.replace(specs[0], alphabets=30, characters=964, images=19_280), specs[1])
    with pytest.raises(ValueError, match="must hold"):
        omniglot.load(data_dir, cache_dir=tmp_path, download=False, specs=wrong)


def test_unwritable_cache_directory_is_a_clear_error(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(PermissionError, match="METALIB_CACHE"):
        omniglot.load(data_dir, cache_dir=blocker / "cache", download=False, specs=specs)
    assert blocker.read_text() == "a file where the cache folder should be"


def test_failed_cache_write_leaves_no_partial_file(small_omniglot, tmp_path, monkeypatch):
    data_dir, specs = small_omniglot

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(omniglot.files.os, "fsync", full_disk)  # fails after the bytes are written
    with pytest.raises(PermissionError, match="No space left"):
        omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    assert list((tmp_path / "cache").iterdir()) == []


def test_real_omniglot_has_the_official_counts(real_omniglot):
    assert real_omniglot.images.shape == (32_460, 28, 28)
    assert len(real_omniglot.alphabet_names) == 50 and len(real_omniglot.character_names) == 1_623
    assert sum(real_omniglot.background) == 964
    assert real_omniglot.drawers == 20
    ink = real_omniglot.images.float().mean(dim=(1, 2))
    assert ink.min() > 0, "every image has ink"
    sources = real_omniglot.sources
    assert sources["images_background"]["characters"] == 964
    assert sources["images_evaluation"]["images"] == 13_180
    assert str(SHARED_OMNIGLOT) in sources["images_background"]["path"]
