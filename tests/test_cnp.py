"""The conditional neural process: the math by hand, invariances and bad input."""

import pytest
import torch

from metalib.algorithms import cnp


def task_batch(tasks=3, k=4, m=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(tasks, k, 1, generator=g),
        torch.randn(tasks, k, 1, generator=g),
        torch.randn(tasks, m, 1, generator=g),
    )


def test_forward_by_hand():
    torch.manual_seed(0)
    model = cnp.CNP(hidden=8)
    xs, ys, xq = task_batch()
    r = torch.stack(
        [model.encoder(torch.cat([xs[t], ys[t]], -1)).mean(0) for t in range(3)]
    )  # (3, 8)
    out = model.decoder(torch.cat([xq, r[:, None].expand(-1, 6, -1)], -1))  # (3, 6, 2)
    mean, std = model(xs, ys, xq)
    torch.testing.assert_close(mean, out[..., :1])
    torch.testing.assert_close(std, 0.1 + 0.9 * torch.nn.functional.softplus(out[..., 1:]))
    assert (std > 0.1).all()


def test_prediction_is_invariant_to_the_order_of_the_support_set():
    torch.manual_seed(0)
    model = cnp.CNP(hidden=16)
    xs, ys, xq = task_batch(k=7)
    order = torch.randperm(7)
    a, b = model(xs, ys, xq), model(xs[:, order], ys[:, order], xq)
    torch.testing.assert_close(a, b)
    # but it does depend on the support values
    assert not torch.allclose(a[0], model(xs, ys + 1, xq)[0])


def test_tasks_are_independent_in_a_batch():
    torch.manual_seed(0)
    model = cnp.CNP(hidden=16)
    xs, ys, xq = task_batch()
    mean, std = model(xs, ys, xq)
    for t in range(3):
        m1, s1 = model(xs[t : t + 1], ys[t : t + 1], xq[t : t + 1])
        torch.testing.assert_close(m1[0], mean[t])
        torch.testing.assert_close(s1[0], std[t])


def test_gaussian_nll_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mean, y = torch.randn(4, 5, 1, generator=g), torch.randn(4, 5, 1, generator=g)
    std = torch.rand(4, 5, 1, generator=g) + 0.1
    expected = -torch.distributions.Normal(mean, std).log_prob(y).mean()
    torch.testing.assert_close(cnp.gaussian_nll(mean, std, y), expected)


def test_bad_input():
    model = cnp.CNP(hidden=8)
    xs, ys, xq = task_batch()
    with pytest.raises(ValueError, match="at least one support point"):
        model(xs[:, :0], ys[:, :0], xq)
    with pytest.raises(ValueError, match="y_support must have shape"):
        model(xs, ys[:, :2], xq)
    with pytest.raises(ValueError, match="x_support must have shape"):
        model(xs[0], ys[0], xq)
    with pytest.raises(ValueError, match="x_query must have shape"):
        model(xs, ys, xq[0])
    with pytest.raises(ValueError, match="hidden"):
        cnp.CNP(hidden=0)
    with pytest.raises(ValueError, match="min_std"):
        cnp.CNP(min_std=0.0)
    with pytest.raises(ValueError, match="min_std"):
        cnp.CNP(min_std=1.5)
