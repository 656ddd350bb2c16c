"""The transfer-learning baseline: fitted heads, equivariance, smoke training, files."""

import pytest
import torch

from metalib import checkpoints, evaluation, recipes
from metalib.algorithms import transfer
from metalib.data import omniglot
from metalib.recipes import transfer_omniglot
from metalib.recipes.transfer_omniglot import TransferConfig


def separable(tasks=3, n_way=4, shots=5, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = 4 * torch.randn(tasks, n_way, dim, generator=g)
    y = torch.arange(n_way).repeat_interleave(shots).expand(tasks, -1)  # (tasks, n)
    x = centres.gather(1, y[..., None].expand(-1, -1, dim)) + 0.1 * torch.randn(
        tasks, n_way * shots, dim, generator=g
    )
    return x, y


def test_fitted_heads_separate_separable_support_sets():
    x, y = separable()
    weight, bias = transfer.fit_heads(x, y, 4)
    logits = x @ weight.transpose(1, 2) + bias[:, None]  # (tasks, n, n_way)
    assert weight.shape == (3, 4, 6) and (logits.argmax(-1) == y).all()


def test_each_episode_gets_its_own_head():
    x, y = separable()
    together = transfer.fit_heads(x, y, 4)
    for t in range(3):
        alone = transfer.fit_heads(x[t : t + 1], y[t : t + 1], 4)
        torch.testing.assert_close(alone[0][0], together[0][t], rtol=1e-4, atol=1e-5)


def test_relabelling_the_classes_relabels_the_predictions():
    torch.manual_seed(0)
    embedding = transfer.PretrainedClassifier(10).embedding.eval()
    g = torch.Generator().manual_seed(1)
    x_support, x_query = (
        torch.rand(2, 5, 1, 28, 28, generator=g),
        torch.rand(2, 7, 1, 28, 28, generator=g),
    )
    y_support = torch.arange(5).expand(2, -1)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = transfer.fine_tune_head(embedding, x_support, y_support, x_query, 5)
    b = transfer.fine_tune_head(embedding, x_support, perm[y_support], x_query, 5)
    torch.testing.assert_close(b[..., perm], a, rtol=1e-3, atol=1e-3)  # summation order
    assert torch.equal(perm[a.argmax(-1)], b.argmax(-1))


def test_fit_heads_bad_input():
    x, y = separable()
    with pytest.raises(ValueError, match="features_support must be"):
        transfer.fit_heads(x[0], y, 4)
    with pytest.raises(ValueError, match="steps"):
        transfer.fit_heads(x, y, 4, steps=-1)
    with pytest.raises(ValueError, match="n_classes"):
        transfer.PretrainedClassifier(1)


@pytest.fixture
def tiny(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def test_pretraining_beats_random_features(tiny):
    config = TransferConfig(meta_steps=60, batch_size=64, outer_lr=3e-3, scheme="lake")
    trained = transfer_omniglot.train(config, data=tiny, device="cpu", progress=False)
    sampler = evaluation.evaluation_sampler(tiny, scheme="lake", n_way=5, k_shot=1)
    before = transfer_omniglot.score_of(
        transfer.PretrainedClassifier(2), config, sampler, n_episodes=100
    )
    after = transfer_omniglot.score_of(trained.model, config, sampler, n_episodes=100)
    # Random features with a fitted head already reach 0.59; 60 steps gave 0.85 here.
    assert after.mean > before.mean + 0.1 and after.mean > 0.7, (before, after)
    whole = transfer_omniglot.score_of(
        trained.model, config, sampler, n_episodes=10, fine_tune="whole"
    )
    assert 0.2 < whole.mean <= 1 and whole.episodes == 10


def test_checkpoint_keeps_the_embedding_only(tiny, tmp_path):
    config = TransferConfig(meta_steps=2, batch_size=8, scheme="lake")
    trained = transfer_omniglot.train(config, data=tiny, device="cpu", progress=False)
    assert trained.model.head.out_features == 20  # 5 characters x 4 rotations in lake train
    recipes.save(trained, tmp_path / "t", metrics={}, command=None)
    assert not any(k.startswith("head") for k in checkpoints.load(tmp_path / "t")["state_dict"])
    loaded = recipes.load(tmp_path / "t.pt", family=transfer_omniglot)
    loaded_config, model = loaded.config, loaded.model
    assert loaded_config == config and not model.training
    for name, value in trained.model.embedding.state_dict().items():
        torch.testing.assert_close(model.embedding.state_dict()[name], value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fine_tune": "all"}, "fine_tune"),
        ({"batch_size": 0}, "batch_size"),
        ({"head_lr": 0.0}, "head_lr"),
        ({"outer_lr_schedule": "cyclic"}, "outer_lr_schedule"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        TransferConfig(**overrides)
