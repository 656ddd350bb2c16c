"""Omniglot MAML recipes on the generated tiny archive: training, resume, evaluation, files."""

import pytest
import torch

from metalib import pretrained, recipes
from metalib.algorithms import lstm_meta
from metalib.data import omniglot
from metalib.recipes import maml_omniglot
from metalib.recipes.maml_omniglot import OmniglotConfig


@pytest.fixture
def tiny(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def tiny_config(**overrides):
    # lake: 20 training classes (5 characters x 4 rotations), 8 test classes
    base = {"scheme": "lake", "meta_batch_size": 4, "k_query": 3, "meta_steps": 6, "seed": 0}
    return OmniglotConfig(**{**base, **overrides})


def test_paper_settings():
    five = OmniglotConfig.paper(5, 1)
    assert (five.inner_lr, five.inner_steps, five.test_inner_steps, five.meta_batch_size) == (
        0.4,
        1,
        3,
        32,
    )
    twenty = OmniglotConfig.paper(20, 5)
    assert (
        twenty.inner_lr,
        twenty.inner_steps,
        twenty.test_inner_steps,
        twenty.meta_batch_size,
    ) == (0.1, 5, 5, 16)
    assert twenty.k_shot == 5 and five.meta_steps == 60_000 and five.outer_lr == 1e-3
    with pytest.raises(ValueError, match="n_way=10"):
        OmniglotConfig.paper(10, 1)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_way": 1}, "n_way=1"),
        ({"k_shot": 0}, "k_shot=0"),
        ({"method": "reptile"}, "method='reptile'"),
        ({"method": "fomaml"}, "first-order by definition"),
        ({"scheme": "omniglot"}, "scheme='omniglot'"),
        ({"inner_lr": float("nan")}, "inner_lr=nan"),
        ({"downsample": "avg"}, "downsample='avg'"),
        ({"method": "lstm-meta", "first_order": True, "inner_lr": 1.5}, "in \\(0, 1\\)"),
        ({"method": "lstm-meta", "inner_steps": 5, "test_inner_steps": 3}, "must equal"),
        ({"rule_hidden": 8}, "rule_hidden=8 sizes a learned update rule"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        OmniglotConfig(**overrides)


def test_training_beats_chance(tiny):
    config = tiny_config(meta_steps=25, meta_batch_size=8, outer_lr=3e-3)
    trained = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)
    sampler = maml_omniglot.sampler_for(tiny, config, split="train", k_query=5)
    curve = maml_omniglot.accuracy_by_step(
        trained.model, trained.params, sampler, n_episodes=60, max_steps=3
    )
    assert len(curve.mean) == 4 and curve.n_tasks == 60
    # Chance is 0.2; 60 episodes x 25 queries give a standard deviation of about 0.01.
    assert curve.mean[3] > 0.3 and curve.mean[3] > curve.mean[0], curve.mean


def test_a_given_model_is_the_one_trained(tiny):
    """Same initial weights and episodes: a given network trains exactly as the default."""
    config = tiny_config(meta_steps=3)
    default = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)
    torch.manual_seed(config.seed)
    net = config.model()
    given = maml_omniglot.train(config, data=tiny, device="cpu", progress=False, model=net)
    assert given.model is net
    assert given.history.losses == default.history.losses
    with pytest.raises(ValueError, match="the model's parameter names"):
        maml_omniglot.train(
            config, data=tiny, device="cpu", progress=False, model=net, params={"w": torch.ones(1)}
        )


def ctrl_c_at_step_2(config, data, state):
    """Train with ``state`` as the resume file and press Ctrl-C after step 2."""

    def interrupt(step, loss):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        maml_omniglot.train(
            config, data=data, device="cpu", progress=False, resume_path=state, callback=interrupt
        )


def test_resume_after_ctrl_c_gives_the_uninterrupted_result(tiny, tmp_path):
    config = tiny_config()
    straight = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)

    state = tmp_path / "run.resume.pt"
    ctrl_c_at_step_2(config, tiny, state)
    assert state.is_file()
    resumed = maml_omniglot.train(
        config, data=tiny, device="cpu", progress=False, resume_path=state
    )
    assert resumed.history.losses == straight.history.losses
    assert all(torch.equal(resumed.params[k], straight.params[k]) for k in straight.params)


def test_resume_after_a_kill_restarts_from_the_last_periodic_save(tiny, tmp_path):
    config = tiny_config()
    straight = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)

    def crash_at_step_4(step, loss):
        if step == 4:
            raise RuntimeError("killed")  # not Ctrl-C: nothing is saved on the way out

    state = tmp_path / "run.resume.pt"
    with pytest.raises(RuntimeError, match="killed"):
        maml_omniglot.train(
            config,
            data=tiny,
            progress=False,
            device="cpu",
            resume_path=state,
            save_every=2,
            callback=crash_at_step_4,
        )
    assert torch.load(state, weights_only=True)["loop"]["step"] == 4  # saved after steps 2 and 4
    resumed = maml_omniglot.train(
        config, data=tiny, device="cpu", progress=False, resume_path=state
    )
    assert all(torch.equal(resumed.params[k], straight.params[k]) for k in straight.params)


def test_resume_refuses_another_configuration(tiny, tmp_path):
    state = tmp_path / "run.resume.pt"
    maml_omniglot.train(
        tiny_config(meta_steps=2), data=tiny, device="cpu", progress=False, resume_path=state
    )
    with pytest.raises(ValueError, match="another configuration"):
        maml_omniglot.train(
            tiny_config(meta_steps=2, inner_lr=0.1),
            data=tiny,
            device="cpu",
            progress=False,
            resume_path=state,
        )


def test_checkpoint_round_trip_and_clear_errors(tiny, tmp_path):
    config = tiny_config(meta_steps=2)
    trained = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)
    pt_path, _ = recipes.save(trained, tmp_path / "maml", metrics={}, command="test")
    loaded = recipes.load(pt_path, family=maml_omniglot)
    loaded_config, model, params = loaded.config, loaded.model, loaded.params
    assert loaded_config == config
    assert all(torch.equal(params[k], trained.params[k]) for k in params)

    twenty_way = maml_omniglot.sampler_for(tiny, tiny_config(n_way=8), split="test")
    with pytest.raises(ValueError, match="8-way: evaluate it with n_way=5"):
        maml_omniglot.accuracy_by_step(model, params, twenty_way, n_episodes=4)

    payload = bytearray(pt_path.read_bytes())
    payload[len(payload) // 2] ^= 0xFF
    pt_path.write_bytes(bytes(payload))
    with pytest.raises(ValueError, match="does not match its sidecar"):
        recipes.load(pt_path)


def test_running_statistics_option_trains_saves_and_resumes(tiny, tmp_path):
    config = tiny_config(transductive_bn=False)
    straight = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)
    running = straight.model.features[1].running_mean
    assert running.abs().sum() > 0, "training updated the running statistics"

    state = tmp_path / "run.resume.pt"
    ctrl_c_at_step_2(config, tiny, state)
    resumed = maml_omniglot.train(
        config, data=tiny, device="cpu", progress=False, resume_path=state
    )
    assert all(torch.equal(resumed.params[k], straight.params[k]) for k in straight.params)
    assert torch.equal(resumed.model.features[1].running_mean, running)

    pt_path, _ = recipes.save(straight, tmp_path / "running", metrics={}, command="test")
    loaded = recipes.load(pt_path, family=maml_omniglot)
    loaded_config, model, params = loaded.config, loaded.model.train(), loaded.params
    assert loaded_config.transductive_bn is False
    assert torch.equal(model.features[1].running_mean, running)
    sampler = maml_omniglot.sampler_for(tiny, config, split="test")
    curve = maml_omniglot.accuracy_by_step(model, params, sampler, n_episodes=4, max_steps=1)
    assert len(curve.mean) == 2 and model.training, "evaluation restores the mode"


def test_the_lstm_meta_recipe_defaults_to_its_papers_first_order_rule():
    config = maml_omniglot.config("lstm-meta-omniglot")
    assert (config.first_order, config.inner_steps, config.test_inner_steps) == (True, 5, 5)
    assert config.rule_hidden == 20 and config.inner_lr == 0.4  # the rule's first gate: MAML's α
    assert maml_omniglot.config("lstm-meta-omniglot", inner_steps=3).test_inner_steps == 3


def test_the_lstm_meta_learner_trains_its_rule_saves_and_scores_with_it(tiny, tmp_path):
    config = tiny_config(
        method="lstm-meta",
        first_order=True,
        inner_steps=2,
        test_inner_steps=2,
        rule_hidden=4,
        meta_steps=20,
        meta_batch_size=8,
        outer_lr=3e-3,
    )
    trained = maml_omniglot.train(config, data=tiny, device="cpu", progress=False)
    weights, rule = lstm_meta.from_state(trained.params)
    start = lstm_meta.init_rule(4, inner_lr=0.4, generator=torch.Generator().manual_seed(0))
    assert lstm_meta.hidden_size(rule) == 4
    assert not torch.equal(rule["lstm.weight_x"], start["lstm.weight_x"])  # the rule trained
    sampler = maml_omniglot.sampler_for(tiny, config, split="train", k_query=5)
    curve = maml_omniglot.accuracy_by_step(
        trained.model, weights, sampler, n_episodes=40, max_steps=2, rule=rule
    )
    assert len(curve.mean) == 3 and curve.mean[2] > curve.mean[0] + 0.05, curve.mean

    pt_path, _ = recipes.save(trained, tmp_path / "lstm", metrics={}, command="test")
    loaded = recipes.load(pt_path, family=maml_omniglot)
    assert all(torch.equal(loaded.params[k], v) for k, v in trained.params.items())
    with pytest.raises(ValueError, match="leave inner_lr out"):
        maml_omniglot.evaluate(loaded, data=tiny, episodes=4, inner_lr=0.1)
    result = maml_omniglot.evaluate(loaded, data=tiny, episodes=4)
    assert result["inner_lr"] is None and result["inner_steps"] == 2, result
    # The classifier of a shipped checkpoint adapts with the rule, as the evaluation does.
    classifier = pretrained.load(pt_path)
    batch = sampler.sample(1, generator=torch.Generator().manual_seed(1))
    adapted = lstm_meta.adapt(
        loaded.model,
        weights,
        rule,
        batch.x_support[0],
        batch.y_support[0],
        loss_fn=torch.nn.functional.cross_entropy,
        inner_steps=2,
    )
    with torch.no_grad():
        expected = torch.func.functional_call(loaded.model, adapted, (batch.x_query[0],))
    scores = classifier.scores(batch.x_support[0], batch.y_support[0], batch.x_query[0])
    torch.testing.assert_close(scores, expected)
