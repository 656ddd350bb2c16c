"""Class splits: counts, rotations, disjointness, completeness, bad input."""

import pytest

from metalib.data import omniglot, splits


@pytest.fixture
def small(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def write_split(data, split, lines):
    folder = data.data_dir / "splits" / "vinyals"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))


def test_lake_splits_by_archive_with_four_rotations(small):
    train = splits.class_split(small, scheme="lake", split="train")
    test = splits.class_split(small, scheme="lake", split="test")
    assert len(train) == 4 * 5 and len(test) == 4 * 2
    assert train.rotations.tolist() == [0, 1, 2, 3] * 5
    assert set(train.characters.tolist()) == {0, 1, 2, 3, 4}
    assert set(test.characters.tolist()) == {5, 6}
    plain = splits.class_split(small, scheme="lake", split="train", rotations=False)
    assert plain.characters.tolist() == [0, 1, 2, 3, 4] and plain.rotations.tolist() == [0] * 5
    assert splits.summary(small, train) == {
        "alphabets": 2,
        "characters": 5,
        "classes": 20,
        "images": 100,
    }


def test_vinyals_reads_the_split_files(small):
    names = small.character_names
    write_split(
        small, "train", [f"{names[c]}/rot{r:03d}" for c in (0, 3, 5) for r in (0, 90, 180, 270)]
    )
    train = splits.class_split(small, split="train")
    assert train.characters.tolist() == [0] * 4 + [3] * 4 + [5] * 4
    assert train.rotations.tolist() == [0, 1, 2, 3] * 3
    assert splits.class_split(small, split="train", rotations=False).characters.tolist() == [
        0,
        3,
        5,
    ]


def test_vinyals_split_file_naming_an_unknown_character_is_refused(small):
    write_split(small, "val", ["Alpha/character01/rot000", "Klingon/character01/rot000"])
    with pytest.raises(ValueError, match=r"line 2 names 'Klingon/character01'"):
        splits.class_split(small, split="val")


def test_malformed_or_repeated_split_lines_are_refused(small):
    write_split(small, "test", ["Alpha/character01/rot045"])
    with pytest.raises(ValueError, match="line 1 is 'Alpha/character01/rot045'"):
        splits.class_split(small, split="test")
    write_split(small, "test", ["Alpha/character01/rot000", "Alpha/character01/rot000"])
    with pytest.raises(ValueError, match="lists a class twice"):
        splits.class_split(small, split="test")


def test_missing_split_file_says_where_and_how(small):
    with pytest.raises(
        FileNotFoundError, match=r"splits/vinyals/train\.txt not found.*prototypical-networks"
    ):
        splits.class_split(small, split="train", download=False)


def test_unknown_scheme_or_split_is_refused(small):
    with pytest.raises(ValueError, match="scheme='omniglot'"):
        splits.class_split(small, scheme="omniglot")
    with pytest.raises(ValueError, match=r"split='val'.*lake has no validation"):
        splits.class_split(small, scheme="lake", split="val")
    with pytest.raises(ValueError, match="split='dev'"):
        splits.class_split(small, split="dev")


def characters(data, scheme, split):
    return set(
        splits.class_split(data, scheme=scheme, split=split, download=False).characters.tolist()
    )


def test_real_vinyals_split_is_disjoint_and_complete(real_omniglot):
    train, val, test = (characters(real_omniglot, "vinyals", s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (1_028, 172, 423)
    assert not train & val and not train & test and not val & test
    assert characters(real_omniglot, "vinyals", "trainval") == train | val
    assert len(train | val | test) == 1_623
    classes = splits.class_split(real_omniglot, split="train", download=False)
    assert len(classes) == 4_112 and classes.rotations.bincount().tolist() == [1_028] * 4


def test_real_lake_split_is_disjoint_and_complete(real_omniglot):
    train, test = (characters(real_omniglot, "lake", s) for s in ("train", "test"))
    assert (len(train), len(test)) == (964, 659)
    assert not train & test and len(train | test) == 1_623
    summary = splits.summary(
        real_omniglot, splits.class_split(real_omniglot, scheme="lake", split="test")
    )
    assert summary == {"alphabets": 20, "characters": 659, "classes": 2_636, "images": 13_180}
