"""Matching Networks' attention and Siamese networks' pair scores, by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from metalib.algorithms import matching, siamese


def test_matching_attention_by_hand():
    query = torch.tensor([[[1.0, 0.0]]])  # (1, 1, 2)
    support = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # cosines 1, 0, 1/√2
    labels = torch.tensor([[0, 1, 1]])
    for scale in (1.0, 10.0):
        weights = torch.tensor([math.exp(scale), 1.0, math.exp(scale / math.sqrt(2))])
        weights = weights / weights.sum()
        expected = torch.tensor([[[weights[0], weights[1] + weights[2]]]]).log()
        got = matching.log_probabilities(query, support, labels, 2, scale=scale)
        torch.testing.assert_close(got, expected)


def test_matching_log_probabilities_are_normalised_and_cross_entropy_is_their_nll():
    gen = torch.Generator().manual_seed(0)
    query, support = torch.randn(2, 4, 8, generator=gen), torch.randn(2, 6, 8, generator=gen)
    labels = torch.tensor([0, 1, 2, 0, 1, 2]).expand(2, -1)
    logp = matching.log_probabilities(query, support, labels, 3)
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 4))
    targets = torch.tensor([0, 2, 1, 1])
    torch.testing.assert_close(
        F.cross_entropy(logp[0], targets), -logp[0, torch.arange(4), targets].mean()
    )


def test_matching_bad_input():
    x = torch.zeros(1, 2, 4)
    with pytest.raises(ValueError, match="scale=0"):
        matching.log_probabilities(x, x, torch.tensor([[0, 1]]), 2, scale=0)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        matching.log_probabilities(x, x, torch.tensor([[0, 5]]), 2)


def test_siamese_pair_logits_are_the_weighted_l1_distance():
    torch.manual_seed(0)
    model = siamese.SiameseNet(hidden=64).eval()
    a, b = torch.rand(1, 2, 1, 28, 28), torch.rand(1, 3, 1, 28, 28)
    with torch.no_grad():
        ea, eb = model.embedding(a), model.embedding(b)
        pairs = model.pair_logits(ea, eb)  # (1, 2, 3)
        w, bias = model.head.weight[0], model.head.bias[0]
        for i in range(2):
            for j in range(3):
                by_hand = (w * (ea[0, i] - eb[0, j]).abs()).sum() + bias
                torch.testing.assert_close(pairs[0, i, j], by_hand)
        torch.testing.assert_close(model(a[0, :1], b[0, :1]), pairs[0, :1, 0])


def test_siamese_classifies_by_mean_pair_score_per_class():
    torch.manual_seed(0)
    model = siamese.SiameseNet().eval()
    x_support, x_query = torch.rand(1, 4, 1, 28, 28), torch.rand(1, 3, 1, 28, 28)
    y_support = torch.tensor([[1, 0, 1, 0]])
    with torch.no_grad():
        scores = siamese.episode_logits(model, x_support, y_support, x_query, n_way=2)
        emb = model.embedding(torch.cat([x_support, x_query], 1))
        pairs = model.pair_logits(emb[:, 4:], emb[:, :4])[0]  # (3, 4)
    expected = torch.stack([pairs[:, [1, 3]].mean(1), pairs[:, [0, 2]].mean(1)], dim=1)
    torch.testing.assert_close(scores[0], expected)


def test_siamese_pair_loss_balances_same_and_different_pairs():
    torch.manual_seed(0)
    model = siamese.SiameseNet()
    x_support, x_query = torch.rand(1, 3, 1, 28, 28), torch.rand(1, 3, 1, 28, 28)
    y = torch.tensor([[0, 1, 2]])
    loss = siamese.pair_loss(model, x_support, y, x_query, y)
    emb = model.embedding(torch.cat([x_support, x_query], 1))
    pairs = model.pair_logits(emb[:, 3:], emb[:, :3])[0]
    same = torch.eye(3)
    per_pair = F.binary_cross_entropy_with_logits(pairs, same, reduction="none")
    expected = (2 * (per_pair * same).sum() + (per_pair * (1 - same)).sum()) / 9  # pos_weight 6/3
    torch.testing.assert_close(loss, expected)
