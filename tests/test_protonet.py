"""Prototypical Networks: prototypes and logits against hand computations, invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from metalib.algorithms import protonet
from metalib.models import ConvEmbedding


def test_prototypes_are_class_means_whatever_the_order():
    emb = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [0.0, 4.0], [5.0, 6.0]]])  # (1, 4, 2)
    labels = torch.tensor([[1, 0, 1, 0]])
    protos = protonet.prototypes(emb, labels, 2)
    expected = torch.tensor([[[4.0, 4.0], [0.5, 2.0]]])  # class 0: rows 1, 3; class 1: rows 0, 2
    torch.testing.assert_close(protos, expected)


def test_euclidean_logits_by_hand():
    query = torch.tensor([[[0.0, 0.0], [1.0, 1.0]]])  # (1, 2, 2)
    protos = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]])  # (1, 3, 2)
    expected = -torch.tensor([[[1.0, 4.0, 25.0], [1.0, 2.0, 13.0]]])
    torch.testing.assert_close(protonet.logits(query, protos), expected)


def test_cosine_logits_by_hand():
    query = torch.tensor([[[2.0, 0.0]]])
    protos = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-1.0, 1.0]]])
    expected = protonet.COSINE_SCALE * torch.tensor([[[1.0, 0.0, -(2**-0.5)]]])
    torch.testing.assert_close(protonet.logits(query, protos, distance="cosine"), expected)


def test_euclidean_protonet_equals_its_linear_classifier_form():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(3, 7, 16, generator=gen)
    protos = torch.randn(3, 5, 16, generator=gen)
    weight, bias = protonet.linear_form(protos)
    linear = query @ weight.transpose(1, 2) + bias[:, None]  # (3, 7, 5)
    distance = protonet.logits(query, protos)
    # They differ by |q|², the same for every class, so the softmax is identical.
    norms = query.pow(2).sum(-1, keepdim=True)  # (3, 7, 1)
    torch.testing.assert_close(linear - distance, norms.expand(-1, -1, 5))
    torch.testing.assert_close(linear.softmax(-1), distance.softmax(-1))


def test_predictions_are_invariant_to_the_order_of_classes():
    torch.manual_seed(0)
    model = ConvEmbedding().eval()
    gen = torch.Generator().manual_seed(1)
    x_support = torch.rand(2, 10, 1, 28, 28, generator=gen)  # 5 classes, 2 shots
    y_support = torch.arange(5).repeat_interleave(2).expand(2, -1)
    x_query = torch.rand(2, 6, 1, 28, 28, generator=gen)
    with torch.no_grad():
        scores = protonet.episode_logits(model, x_support, y_support, x_query, n_way=5)
        relabel = torch.tensor([3, 0, 4, 1, 2])  # class c becomes label relabel[c]
        order = torch.randperm(10, generator=gen)  # and the support set is shuffled
        permuted = protonet.episode_logits(
            model, x_support[:, order], relabel[y_support][:, order], x_query, n_way=5
        )
    torch.testing.assert_close(permuted[..., relabel], scores)
    assert torch.equal(relabel[scores.argmax(-1)], permuted.argmax(-1))


def test_episode_logits_match_a_loop_over_tasks():
    torch.manual_seed(0)
    model = ConvEmbedding().eval()
    x_support, x_query = torch.rand(3, 4, 1, 28, 28), torch.rand(3, 5, 1, 28, 28)
    y_support = torch.tensor([0, 1, 0, 1]).expand(3, -1)
    with torch.no_grad():
        batched = protonet.episode_logits(model, x_support, y_support, x_query, n_way=2)
        for t in range(3):
            s, q = model(x_support[t]), model(x_query[t])
            protos = torch.stack([s[[0, 2]].mean(0), s[[1, 3]].mean(0)])
            by_hand = -torch.cdist(q, protos).pow(2)
            torch.testing.assert_close(batched[t], by_hand, rtol=1e-4, atol=1e-4)


def test_embedding_is_64_dimensional_and_checks_its_input():
    out = ConvEmbedding()(torch.rand(2, 3, 1, 28, 28))
    assert out.shape == (2, 3, 64)
    with pytest.raises(ValueError, match="28×28"):
        ConvEmbedding()(torch.rand(2, 1, 32, 32))


def test_bad_input():
    emb = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.1"):
        protonet.prototypes(emb, torch.tensor([[0, 1, 2]]), 2)
    with pytest.raises(ValueError, match="every one of the 3 classes"):
        protonet.prototypes(emb, torch.tensor([[0, 1, 1]]), 3)
    with pytest.raises(ValueError, match="distance='manhattan'"):
        protonet.logits(emb, emb, distance="manhattan")


def test_loss_is_cross_entropy_of_negative_distances():
    query = torch.tensor([[[0.0, 0.0]]])
    protos = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    loss = F.cross_entropy(protonet.logits(query, protos)[0], torch.tensor([0]))
    expected = -torch.log(torch.tensor(math.exp(-1) / (math.exp(-1) + math.exp(-4))))
    torch.testing.assert_close(loss, expected)
