"""The course's networks: shapes, transductive batch norm, and MAML through the ConvNet."""

import pytest
import torch
import torch.nn.functional as F

from metalib.algorithms import maml
from metalib.data import episodes, omniglot, splits
from metalib.models import (
    ConvNet,
    RunningBatchNorm2d,
    TransductiveBatchNorm2d,
    clone_parameters,
    parameters_of,
)


@pytest.mark.parametrize("downsample", ["stride", "maxpool"])
def test_convnet_maps_images_to_logits(downsample):
    model = ConvNet(5, downsample=downsample)
    assert model(torch.rand(7, 1, 28, 28)).shape == (7, 5)
    assert set(model.head_names()) <= set(parameters_of(model))
    # 4 blocks of (3*3*in*64 + 64) conv + 2*64 BN, then a 64 -> 5 head
    expected = (9 * 1 * 64 + 64) + 3 * (9 * 64 * 64 + 64) + 4 * 128 + (64 * 5 + 5)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_batch_norm_is_transductive():
    """Each batch is normalised with its own statistics; eval mode changes nothing."""
    torch.manual_seed(0)
    model = ConvNet(5, hidden=16)
    x = torch.rand(6, 1, 28, 28)
    alone = model(x[:3])
    together = model(x)[:3]
    assert not torch.allclose(alone, together), "outputs depend on the rest of the batch"
    model.eval()
    torch.testing.assert_close(model(x[:3]), alone)
    assert not list(model.buffers()), "no running statistics are kept"


def test_transductive_batch_norm_equals_torch_batch_norm_without_running_stats():
    torch.manual_seed(0)
    ours, theirs = TransductiveBatchNorm2d(4), torch.nn.BatchNorm2d(4, track_running_stats=False)
    with torch.no_grad():
        for module in (ours, theirs):
            module.weight.copy_(torch.tensor([1.0, 2.0, -0.5, 0.3]))
            module.bias.copy_(torch.tensor([0.0, 1.0, 0.2, -1.0]))
    x = torch.randn(6, 4, 5, 5, requires_grad=True)
    torch.testing.assert_close(ours(x), theirs(x))
    w = torch.randn(6, 4, 5, 5)
    (g_ours,) = torch.autograd.grad((ours(x) * w).sum(), x)
    (g_theirs,) = torch.autograd.grad((theirs(x) * w).sum(), x)
    torch.testing.assert_close(g_ours, g_theirs)


def test_convnet_bad_arguments():
    with pytest.raises(ValueError, match="n_way=0"):
        ConvNet(0)
    with pytest.raises(ValueError, match="downsample='avgpool'"):
        ConvNet(5, downsample="avgpool")


@pytest.fixture
def tiny_sampler(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    data = omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)
    classes = splits.class_split(data, scheme="lake", split="train")  # 20 classes
    return episodes.EpisodeSampler(data, classes, n_way=5, k_shot=1, k_query=3)


def in_double(batch):
    """The episodes with float64 images (labels stay integers)."""
    return episodes.Episodes(
        batch.x_support.double(), batch.y_support, batch.x_query.double(), batch.y_query
    )


def meta_gradient(meta_loss_fn, model, params, batch, **kwargs):
    loss = meta_loss_fn(model, params, batch, loss_fn=F.cross_entropy, inner_lr=0.4, **kwargs)
    return torch.autograd.grad(loss, list(params.values()))


def oracle_meta_gradient(model, params, batch, *, inner_lr=0.4):
    """One inner step per task with torch.autograd.grad(create_graph=True), no torch.func."""
    names = list(params)
    total = 0
    for i in range(len(batch)):
        support_loss = F.cross_entropy(
            torch.func.functional_call(model, params, (batch.x_support[i],)), batch.y_support[i]
        )
        grads = torch.autograd.grad(support_loss, [params[k] for k in names], create_graph=True)
        adapted = {k: params[k] - inner_lr * g for k, g in zip(names, grads, strict=True)}
        logits = torch.func.functional_call(model, adapted, (batch.x_query[i],))
        total = total + F.cross_entropy(logits, batch.y_query[i])
    return torch.autograd.grad(total / len(batch), [params[k] for k in names])


def test_convnet_meta_gradient_vmap_equals_loop_and_oracle(tiny_sampler):
    torch.manual_seed(0)
    model = ConvNet(5, hidden=8).double()
    params = clone_parameters(parameters_of(model))
    batch = tiny_sampler.sample(3, generator=torch.Generator().manual_seed(0))
    batch = in_double(batch)
    batched = meta_gradient(maml.meta_loss, model, params, batch)
    looped = meta_gradient(maml.meta_loss_loop, model, params, batch)
    oracle = oracle_meta_gradient(model, params, batch)
    for a, b, c in zip(batched, looped, oracle, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-9, atol=1e-11)
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-11)
    two_steps = meta_gradient(maml.meta_loss, model, params, batch, inner_steps=2)
    for a, b in zip(
        two_steps,
        meta_gradient(maml.meta_loss_loop, model, params, batch, inner_steps=2),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_fused_batch_norm_under_vmap_gives_a_wrong_second_derivative(tiny_sampler):
    """Why ConvNet does not use nn.BatchNorm2d. If this starts failing, PyTorch has fixed it."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, stride=4),
        torch.nn.BatchNorm2d(4, track_running_stats=False),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(5),
    ).double()
    batch = tiny_sampler.sample(3, generator=torch.Generator().manual_seed(0))
    batch = in_double(batch)
    model(batch.x_support[0])  # materialise the lazy layer
    params = clone_parameters(parameters_of(model))
    batched = meta_gradient(maml.meta_loss, model, params, batch)
    oracle = oracle_meta_gradient(model, params, batch)
    gap = max((a - c).abs().max().item() for a, c in zip(batched, oracle, strict=True))
    assert gap > 1e-6, (
        f"vmap and the oracle now agree (gap {gap:.1e}): nn.BatchNorm2d may be usable"
    )


def test_convnet_second_order_differs_from_first_order(tiny_sampler):
    torch.manual_seed(0)
    model = ConvNet(5, hidden=8)
    params = clone_parameters(parameters_of(model))
    batch = tiny_sampler.sample(3, generator=torch.Generator().manual_seed(1))
    second = meta_gradient(maml.meta_loss, model, params, batch)
    first = meta_gradient(maml.meta_loss, model, params, batch, first_order=True)
    gap = max((a - b).abs().max() for a, b in zip(second, first, strict=True))
    assert gap > 1e-4


def query_accuracy(model, params, batch, inner_steps):
    adapted = maml.adapt_batch(
        model,
        params,
        *batch.support,
        loss_fn=F.cross_entropy,
        inner_lr=0.4,
        inner_steps=inner_steps,
    )
    logits = torch.vmap(lambda p, x: torch.func.functional_call(model, p, (x,)))(
        adapted, batch.x_query
    )
    return (logits.argmax(-1) == batch.y_query).float().mean().item()


def test_a_few_maml_steps_on_the_tiny_archive_beat_chance(tiny_sampler):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(2)
    model = ConvNet(5, hidden=16)
    params = clone_parameters(parameters_of(model))
    test = tiny_sampler.sample(100, generator=torch.Generator().manual_seed(3))
    untrained = query_accuracy(model, params, test, inner_steps=1)
    optimizer = torch.optim.Adam(params.values(), lr=3e-3)
    for _ in range(40):
        loss = maml.meta_loss(
            model,
            params,
            tiny_sampler.sample(8, generator=generator),
            loss_fn=F.cross_entropy,
            inner_lr=0.4,
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    accuracy = query_accuracy(model, params, test, inner_steps=1)
    # Chance is 1/5; over 1,500 queries its standard deviation is about 0.01.
    assert accuracy > 0.3 and accuracy > untrained + 0.1, (accuracy, untrained)


def test_running_batch_norm_uses_batch_stats_in_training_and_running_stats_in_eval():
    torch.manual_seed(0)
    bn = RunningBatchNorm2d(3, momentum=0.5)
    h = torch.randn(8, 3, 4, 4) * 2 + 1
    torch.testing.assert_close(bn(h), TransductiveBatchNorm2d(3)(h))  # train mode
    bn.observe(h)
    torch.testing.assert_close(bn.running_mean, 0.5 * h.mean(dim=(0, 2, 3)))
    torch.testing.assert_close(bn.running_var, 0.5 + 0.5 * h.var(dim=(0, 2, 3)))
    bn.eval()
    expected = (h - bn.running_mean[:, None, None]) / torch.sqrt(
        bn.running_var[:, None, None] + 1e-5
    )
    torch.testing.assert_close(bn(h), expected)


def test_running_statistics_make_eval_predictions_independent_of_the_batch(tiny_sampler):
    torch.manual_seed(0)
    model = ConvNet(5, hidden=8, transductive_bn=False)
    params = parameters_of(model)
    batch = tiny_sampler.sample(4, generator=torch.Generator().manual_seed(0))
    before = [b.running_mean.clone() for b in model.modules() if isinstance(b, RunningBatchNorm2d)]
    model.update_running_stats(params, batch.x_query.flatten(0, 1))
    after = [b.running_mean for b in model.modules() if isinstance(b, RunningBatchNorm2d)]
    assert len(after) == 4 and all(
        not torch.equal(a, b) for a, b in zip(before, after, strict=True)
    )
    assert model.training, "update_running_stats leaves the mode as it was"
    x = batch.x_query[0]
    model.eval()
    torch.testing.assert_close(model(x[:3]), model(x)[:3])  # no dependence on the rest of the batch
    model.train()
    assert not torch.allclose(model(x[:3]), model(x)[:3])
    transductive = ConvNet(5, hidden=8)
    transductive.update_running_stats(parameters_of(transductive), x)  # nothing to update
    assert not list(transductive.buffers())


def test_maml_with_running_statistics_trains_under_vmap(tiny_sampler):
    torch.manual_seed(0)
    model = ConvNet(5, hidden=8, transductive_bn=False).double()
    params = clone_parameters(parameters_of(model))
    batch = tiny_sampler.sample(3, generator=torch.Generator().manual_seed(4))
    batch = in_double(batch)
    batched = meta_gradient(maml.meta_loss, model, params, batch)
    looped = meta_gradient(maml.meta_loss_loop, model, params, batch)
    for a, b in zip(batched, looped, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
