"""Finding, downloading and checking Omniglot archives (no network: file:// URLs)."""

import dataclasses
import hashlib
import zipfile

import pytest

from metalib.data import archives
from tests.conftest import SHARED_OMNIGLOT, write_archive


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_inspect_counts_a_well_formed_archive(small_omniglot):
    data_dir, (background, _) = small_omniglot
    report = archives.inspect(data_dir / "images_background.zip", background)
    assert report["alphabets"] == 2 and report["characters"] == 5 and report["images"] == 100
    assert report["official_md5"] is False
    assert (
        report["md5"] == hashlib.md5((data_dir / "images_background.zip").read_bytes()).hexdigest()
    )


def test_inspect_accepts_the_published_md5(small_omniglot):
    data_dir, (background, _) = small_omniglot
    path = data_dir / "images_background.zip"
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    assert archives.inspect(path, dataclasses.replace(background, md5=md5))["official_md5"]


def test_inspect_rejects_wrong_counts(small_omniglot):
    data_dir, (background, _) = small_omniglot
    wrong = dataclasses.replace(background, characters=6, images=120)
    with pytest.raises(ValueError, match=r"'characters': 5.*'characters': 6"):
        archives.inspect(data_dir / "images_background.zip", wrong)


def test_inspect_rejects_truncated_archive(small_omniglot):
    data_dir, (background, _) = small_omniglot
    path = data_dir / "images_background.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        archives.inspect(path, background)


def test_inspect_rejects_foreign_members(tmp_path):
    path = tmp_path / "images_background.zip"
    spec = write_archive(path, "images_background", extra={"images_background/notes.txt": b"hi"})
    with pytest.raises(ValueError, match=r"notes\.txt"):
        archives.inspect(path, spec)


def test_inspect_rejects_a_missing_drawer(tmp_path):
    path = tmp_path / "images_background.zip"
    spec = write_archive(path, "images_background")
    # Rename drawer 20 of one character to drawer 19 of another: counts stay, drawers do not.
    with zipfile.ZipFile(path) as archive:
        entries = {i.filename: archive.read(i) for i in archive.infolist()}
    moved = "images_background/Alpha/character01/0001_20.png"
    entries["images_background/Alpha/character02/0002_21.png"] = entries.pop(moved)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="drawer 21"):
        archives.inspect(path, spec)


def test_inspect_skips_directories_and_mac_metadata(tmp_path):
    path = tmp_path / "images_background.zip"
    spec = write_archive(
        path, "images_background", extra={"__MACOSX/._x": b"", "images_background/.DS_Store": b""}
    )
    assert archives.inspect(path, spec)["images"] == 100


def test_download_verifies_md5_before_renaming(tmp_path):
    source = tmp_path / "server.bin"
    source.write_bytes(b"omniglot" * 1000)
    target = tmp_path / "data" / "archive.zip"
    good = hashlib.md5(source.read_bytes()).hexdigest()
    assert archives.download(source.as_uri(), target, md5=good).read_bytes() == source.read_bytes()

    target.unlink()
    with pytest.raises(ValueError, match="not the published 0123"):
        archives.download(source.as_uri(), target, md5="0123" + good[4:])
    assert not target.exists() and leftovers(target.parent) == []


def test_download_failure_leaves_nothing(tmp_path):
    target = tmp_path / "archive.zip"
    with pytest.raises(FileNotFoundError, match="downloading file://"):
        archives.download((tmp_path / "absent.zip").as_uri(), target, md5=None)
    assert list(tmp_path.iterdir()) == []


def test_locate_downloads_a_missing_archive(tmp_path):
    server = tmp_path / "server"
    server.mkdir()
    spec = write_archive(server / "images_background.zip", "images_background")
    spec = dataclasses.replace(spec, url=(server / "images_background.zip").as_uri())
    data_dir = tmp_path / "data"
    assert (
        archives.locate(spec, data_dir).read_bytes()
        == (server / "images_background.zip").read_bytes()
    )


def test_locate_says_where_it_looked_and_how_to_get_the_file(tmp_path):
    spec = dataclasses.replace(archives.BACKGROUND, url=(tmp_path / "nowhere.zip").as_uri())
    with pytest.raises(FileNotFoundError, match=f"not found in {tmp_path}.*METALIB_DATA"):
        archives.locate(spec, tmp_path, download_missing=False)
    with pytest.raises(FileNotFoundError, match=r"downloading .*failed.*METALIB_DATA"):
        archives.locate(spec, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_shared_archives_pass_the_content_check():
    if not (SHARED_OMNIGLOT / "images_background.zip").is_file():
        pytest.skip(f"the real Omniglot archives are not in {SHARED_OMNIGLOT}")
    background = archives.inspect(SHARED_OMNIGLOT / "images_background.zip", archives.BACKGROUND)
    evaluation = archives.inspect(SHARED_OMNIGLOT / "images_evaluation.zip", archives.EVALUATION)
    assert (background["alphabets"], background["characters"], background["images"]) == (
        30,
        964,
        19_280,
    )
    assert (evaluation["alphabets"], evaluation["characters"], evaluation["images"]) == (
        20,
        659,
        13_180,
    )
