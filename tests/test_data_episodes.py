"""The episode sampler: shapes, labels, disjointness, content, seeds, bad input."""

from types import SimpleNamespace

import pytest
import torch

from metalib.data import episodes, omniglot, splits


@pytest.fixture
def small(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


@pytest.fixture
def sampler(small):
    classes = splits.class_split(small, scheme="lake", split="train")  # 20 classes
    return episodes.EpisodeSampler(small, classes, n_way=5, k_shot=2, k_query=3)


def test_shapes_dtypes_and_labels(sampler):
    x_s, y_s, x_q, y_q = sampler.sample(4, generator=torch.Generator().manual_seed(0))
    assert x_s.shape == (4, 10, 1, 28, 28) and x_q.shape == (4, 15, 1, 28, 28)
    assert x_s.dtype == torch.float32 and 0 <= x_s.min() and x_s.max() <= 1
    assert y_s.tolist() == [[0, 0, 1, 1, 2, 2, 3, 3, 4, 4]] * 4
    assert y_q.shape == (4, 15) and y_q.min() == 0 and y_q.max() == 4
    assert torch.equal(y_q[0].bincount(), torch.full((5,), 3))


def test_episodes_hold_the_right_images(small, sampler):
    """The batched gather against a loop over tasks, classes and drawers."""
    classes, drawers = sampler.sample_indices(3, generator=torch.Generator().manual_seed(1))
    x_s, _, x_q, _ = sampler.gather(classes, drawers)
    for t in range(3):
        for label, c in enumerate(classes[t].tolist()):
            character = int(sampler.classes.characters[c])
            turns = int(sampler.classes.rotations[c])
            for j, d in enumerate(drawers[t, label].tolist()):
                image = (
                    torch.rot90(small.by_character()[character, d], turns, dims=(0, 1)).float()
                    / 255
                )
                shown = x_s[t, label * 2 + j, 0] if j < 2 else x_q[t, label * 3 + j - 2, 0]
                torch.testing.assert_close(shown, image)


def test_classes_and_images_never_repeat_within_an_episode(sampler):
    classes, drawers = sampler.sample_indices(500, generator=torch.Generator().manual_seed(2))
    assert all(len(set(row)) == 5 for row in classes.tolist())
    assert all(len(set(d)) == 5 for task in drawers.tolist() for d in task), (
        "support and query disjoint"
    )
    assert classes.min() >= 0 and classes.max() < len(sampler.classes)


def test_same_seed_same_episodes_other_seed_other_episodes(sampler):
    first = sampler.sample(8, generator=torch.Generator().manual_seed(3))
    again = sampler.sample(8, generator=torch.Generator().manual_seed(3))
    other = sampler.sample(8, generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first.x_support, other.x_support)


def test_labels_are_permuted_per_episode(sampler):
    classes, _ = sampler.sample_indices(2_000, generator=torch.Generator().manual_seed(5))
    # Every class gets label 0 sometimes, and the order of classes is not sorted.
    assert set(classes[:, 0].tolist()) == set(range(len(sampler.classes)))
    increasing = (classes.diff(dim=1) > 0).all(dim=1).float().mean()
    assert increasing < 0.05  # 1/5! ≈ 0.8% for a random order


def test_classes_are_chosen_uniformly():
    generator = torch.Generator().manual_seed(6)
    chosen = episodes._choose(30_000, 3, 10, generator)
    counts = chosen.flatten().bincount(minlength=10).float()
    assert (counts / 9_000 - 1).abs().max() < 0.05  # each class in 30% of tasks
    first = chosen[:, 0].bincount(minlength=10).float()
    assert (first / 3_000 - 1).abs().max() < 0.1  # and equally likely in every position
    assert all(len(set(row)) == 3 for row in chosen.tolist())


def test_rotated_classes_are_rotated_images(small):
    classes = splits.class_split(small, scheme="lake", split="test")  # characters 5 and 6
    sampler = episodes.EpisodeSampler(small, classes, n_way=2, k_shot=1, k_query=1)
    for c in range(len(classes)):
        base = small.by_character()[int(classes.characters[c])]
        turns = int(classes.rotations[c])
        assert torch.equal(sampler.images[c], torch.rot90(base, turns, dims=(-2, -1)))
    assert not torch.equal(sampler.images[0], sampler.images[1])


def test_class_names_describe_the_episode(small, sampler):
    assert sampler.class_names(torch.tensor([0, 5]), small) == [
        "Alpha/character01 rot000",
        "Alpha/character02 rot090",
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_way": 21}, "n_way=21 must be an integer between 2 and 20"),
        ({"n_way": 1}, "n_way=1"),
        ({"k_shot": 0}, "k_shot=0"),
        ({"k_query": 0}, "k_query=0"),
        ({"k_shot": 10, "k_query": 11}, r"10 \+ 11 exceeds the 20 images per class"),
        ({"n_way": 5.0}, "n_way=5.0"),
    ],
)
def test_bad_sampler_arguments(small, kwargs, message):
    classes = splits.class_split(small, scheme="lake", split="train")
    with pytest.raises(ValueError, match=message):
        episodes.EpisodeSampler(small, classes, **kwargs)


def test_bad_task_count(sampler):
    with pytest.raises(ValueError, match="tasks=0"):
        sampler.sample(0, generator=torch.Generator())


def test_a_device_generator_is_refused(sampler):
    cuda_generator = SimpleNamespace(device=torch.device("cuda"))
    with pytest.raises(ValueError, match=r"torch.Generator\(\) \(CPU\)"):
        sampler.sample(1, generator=cuda_generator)


def test_with_shape_shares_the_images_and_checks_the_new_shape(sampler):
    wider = sampler.with_shape(n_way=10, k_shot=3, k_query=4)
    assert wider.images.data_ptr() == sampler.images.data_ptr()
    batch = wider.sample(2, generator=torch.Generator().manual_seed(0))
    assert batch.x_support.shape == (2, 30, 1, 28, 28) and batch.x_query.shape == (2, 40, 1, 28, 28)
    assert (sampler.n_way, sampler.k_shot, sampler.k_query) == (5, 2, 3), (
        "the original is unchanged"
    )
    with pytest.raises(ValueError, match="n_way=21"):
        sampler.with_shape(n_way=21, k_shot=1, k_query=1)
