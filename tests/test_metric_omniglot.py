"""The metric-based recipes on the generated tiny archive: training, evaluation, files."""

import dataclasses
import json

import pytest
import torch

from metalib import checkpoints, evaluation, recipes
from metalib.data import omniglot
from metalib.recipes import metric_omniglot
from metalib.recipes.metric_omniglot import MetricConfig


@pytest.fixture
def tiny(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def tiny_config(**overrides):
    # lake: 20 training classes (5 characters x 4 rotations), 8 test classes
    base = {"scheme": "lake", "train_way": 10, "k_query": 3, "meta_steps": 30, "seed": 0}
    return MetricConfig(**{**base, **overrides})


@pytest.mark.parametrize("method", metric_omniglot.METHODS)
def test_training_beats_chance(tiny, method):
    # The Siamese network learns from pairs, a weaker signal per step: at 30 steps four
    # seeds scored 0.32-0.40 here, at 60 steps 0.57-0.78.
    steps = 60 if method == "siamese" else 30
    config = tiny_config(method=method, outer_lr=3e-3, meta_steps=steps)
    trained = metric_omniglot.train(config, data=tiny, device="cpu", progress=False)
    sampler = evaluation.evaluation_sampler(tiny, scheme="lake", n_way=5, k_shot=1)
    before = metric_omniglot.score_of(config.model(), config, sampler, n_episodes=100)
    after = metric_omniglot.score_of(trained.model, config, sampler, n_episodes=100)
    assert after.episodes == 100 and 0 < after.ci95 < 0.1
    # Chance is 0.2; 100 episodes of 75 queries give a standard error of about 0.005.
    print(method, before, after)
    assert after.mean > 0.4 and after.mean > before.mean + 0.05, (before, after)


def test_evaluation_uses_the_same_episodes_for_every_model(tiny):
    config = tiny_config()
    sampler = evaluation.evaluation_sampler(tiny, scheme="lake", n_way=4, k_shot=2)
    model = config.model()
    first = metric_omniglot.per_episode_accuracy(model, config, sampler, n_episodes=30)
    again = metric_omniglot.per_episode_accuracy(model, config, sampler, n_episodes=30)
    other_seed = metric_omniglot.per_episode_accuracy(model, config, sampler, n_episodes=30, seed=1)
    assert torch.equal(first, again) and not torch.equal(first, other_seed)
    assert first.shape == (30,) and ((first >= 0) & (first <= 1)).all()


def test_cosine_distance_is_used_when_asked(tiny):
    euclid, cosine = tiny_config(), tiny_config(distance="cosine")
    batch = evaluation.evaluation_sampler(tiny, scheme="lake").sample(
        2, generator=torch.Generator()
    )
    model = euclid.model().eval()
    with torch.no_grad():
        a = metric_omniglot.episode_logits(
            model, euclid, batch.x_support, batch.y_support, batch.x_query
        )
        b = metric_omniglot.episode_logits(
            model, cosine, batch.x_support, batch.y_support, batch.x_query
        )
    assert b.abs().max() <= 10 + 1e-4 and not torch.allclose(a, b)


def test_checkpoint_round_trip(tiny, tmp_path):
    config = tiny_config(method="matching", meta_steps=3)
    trained = metric_omniglot.train(config, data=tiny, device="cpu", progress=False)
    pt, sidecar = recipes.save(trained, tmp_path / "m", metrics={"x": 1}, command="test")
    loaded = recipes.load(pt, family=metric_omniglot)
    loaded_config, model = loaded.config, loaded.model
    assert loaded_config == config and not model.training
    for name, value in trained.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value)
    assert json.loads(sidecar.read_text())["recipe"] == "matching-omniglot"


def test_load_refuses_other_recipes(tmp_path):
    checkpoints.save(
        tmp_path / "s",
        recipe="sinusoid-maml",
        config={},
        state_dict={"w": torch.zeros(1)},
        metrics={},
        device="cpu",
        wall_time_s=0.0,
        command=None,
    )
    with pytest.raises(ValueError, match="'sinusoid-maml', not one of"):
        recipes.load(tmp_path / "s.pt", family=metric_omniglot)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"method": "relation"}, "method='relation'"),
        ({"train_way": 1}, "train_way=1"),
        ({"k_shot": 0}, "k_shot=0"),
        ({"distance": "l1"}, "distance='l1'"),
        ({"outer_lr": float("inf")}, "outer_lr=inf"),
        ({"halve_every": 0}, "halve_every=0"),
        ({"scale": -1.0}, "scale=-1.0"),
        ({"method": "matching", "init": "protonet_omniglot_1shot"}, "protonet and protomaml only"),
        ({"method": "protomaml", "inner_lr": 0.0}, "inner_lr=0.0"),
        ({"method": "protomaml", "inner_steps": -1}, "inner_steps=-1"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        MetricConfig(**overrides)


def test_episodes_wider_or_deeper_than_the_split_are_refused(tiny):
    with pytest.raises(ValueError, match="n_way=21"):  # lake training has 20 classes
        metric_omniglot.train(tiny_config(train_way=21), data=tiny, device="cpu", progress=False)
    with pytest.raises(ValueError, match="k_shot \\+ k_query = 5 \\+ 16 exceeds the 20"):
        metric_omniglot.train(
            tiny_config(k_shot=5, k_query=16), data=tiny, device="cpu", progress=False
        )
    with pytest.raises(ValueError, match="n_way=9"):  # lake test has 8 classes
        evaluation.evaluation_sampler(tiny, scheme="lake", n_way=9)


def test_embed_episode_gives_queries_and_class_means(tiny):
    config = tiny_config()
    batch = evaluation.evaluation_sampler(tiny, scheme="lake", n_way=4, k_shot=2).sample(
        3, generator=torch.Generator().manual_seed(0)
    )
    model = config.model().train()
    query, protos = metric_omniglot.embed_episode(model, batch, 4)
    assert query.shape == (3, 60, 64) and protos.shape == (3, 4, 64)
    assert model.training, "the network is left in the mode it was in"
    with torch.no_grad():
        support = model.eval()(batch.x_support)  # (3, 8, 64), running statistics as embedded
    for k in range(4):
        torch.testing.assert_close(
            protos[:, k], support[batch.y_support == k].view(3, 2, 64).mean(1)
        )


def test_protomaml_starts_from_its_protonet_and_keeps_its_statistics(tiny, tmp_path):
    protonet_run = metric_omniglot.train(
        tiny_config(meta_steps=5), data=tiny, device="cpu", progress=False
    )
    recipes.save(protonet_run, tmp_path / "p")
    config = tiny_config(method="protomaml", init=str(tmp_path / "p"), meta_steps=0)
    started = metric_omniglot.train(config, data=tiny, device="cpu", progress=False)
    for name, value in protonet_run.model.state_dict().items():
        assert torch.equal(started.model.state_dict()[name], value), name
    trained = metric_omniglot.train(
        dataclasses.replace(config, meta_steps=3), data=tiny, device="cpu", progress=False
    )
    state, start = trained.model.state_dict(), protonet_run.model.state_dict()
    assert not torch.equal(state["features.0.weight"], start["features.0.weight"])
    assert torch.equal(state["features.1.running_mean"], start["features.1.running_mean"])
    # With no inner step its answers are the ProtoNet's, episode for episode.
    sampler = evaluation.evaluation_sampler(tiny, scheme="lake", n_way=5, k_shot=1)
    none = dataclasses.replace(config, inner_steps=0)
    a = metric_omniglot.per_episode_accuracy(started.model, none, sampler, n_episodes=20)
    b = metric_omniglot.per_episode_accuracy(
        protonet_run.model, tiny_config(), sampler, n_episodes=20
    )
    assert torch.equal(a, b)


def test_a_protonet_can_start_from_another_protonet_of_other_shots(tiny, tmp_path):
    one_shot = metric_omniglot.train(
        tiny_config(meta_steps=5), data=tiny, device="cpu", progress=False
    )
    recipes.save(one_shot, tmp_path / "one")
    config = tiny_config(k_shot=2, init=str(tmp_path / "one"), meta_steps=0)
    started = metric_omniglot.train(config, data=tiny, device="cpu", progress=False)
    for name, value in one_shot.model.state_dict().items():
        assert torch.equal(started.model.state_dict()[name], value), name
    trained = metric_omniglot.train(
        dataclasses.replace(config, meta_steps=2), data=tiny, device="cpu", progress=False
    )
    weight = "features.0.weight"
    assert not torch.equal(trained.model.state_dict()[weight], one_shot.model.state_dict()[weight])
    _, sidecar = recipes.save(trained, tmp_path / "two")
    assert json.loads(sidecar.read_text())["config"]["init"] == str(tmp_path / "one")


def test_protomaml_refuses_an_init_of_another_split_or_recipe(tiny, tmp_path):
    recipes.save(
        metric_omniglot.train(tiny_config(meta_steps=1), data=tiny, device="cpu", progress=False),
        tmp_path / "lake",
    )
    config = tiny_config(method="protomaml", init=str(tmp_path / "lake"), scheme="vinyals")
    with pytest.raises(ValueError, match="trained on the lake split, not vinyals"):
        metric_omniglot.load_protonet_embedding(
            config.model(), config.init, scheme=config.scheme, option="init"
        )
    matching = metric_omniglot.train(
        tiny_config(method="matching", meta_steps=1), data=tiny, device="cpu", progress=False
    )
    recipes.save(matching, tmp_path / "m")
    config = tiny_config(method="protomaml", init=str(tmp_path / "m"))
    with pytest.raises(ValueError, match="not 'protonet-omniglot'"):
        metric_omniglot.load_protonet_embedding(
            config.model(), config.init, scheme=config.scheme, option="init"
        )
    with pytest.raises(FileNotFoundError, match="nowhere"):
        metric_omniglot.load_protonet_embedding(
            config.model(), str(tmp_path / "nowhere"), scheme="lake", option="init"
        )
