"""Heads (§3.2, App. A.3) and the margin loss (§3.3)."""
import pytest
import torch

from bagcert_lib.heads import get_head, heaviside
from bagcert_lib.loss import margin_from_region, margin_loss, one_hot_penalty, total_loss


def test_heaviside_forward_is_exact_and_backward_is_sigmoid_derivative():
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.tensor([-3.0, -1e-3, 0.0, 1e-3, 2.0], dtype=dtype, requires_grad=True)
        y = heaviside(x)
        assert y.tolist() == [0, 0, 1, 1, 1]              # H(0) = 1
        y.sum().backward()
        s = torch.sigmoid(x.detach().float())
        torch.testing.assert_close(x.grad.float(), (s * (1 - s)), rtol=1e-2, atol=1e-3)


def test_sigmoid_and_softmax_heads():
    x = torch.randn(2, 10, 4, 4)
    assert torch.allclose(get_head("sigmoid")(x), torch.sigmoid(x))
    assert torch.allclose(get_head("softmax")(x).sum(1), torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="unknown head"):
        get_head("relu")


def test_margin_loss_values():
    s = torch.zeros(2, 3, 2, 2)
    s[0, 0] = 1                                  # sample 0: true class 0 everywhere -> Δ = 1
    s[1, 1] = 1                                  # sample 1: class 1 everywhere, label 0 -> Δ_1 = -1
    labels = torch.tensor([0, 0])
    assert margin_loss(s, labels, 0.5).tolist() == [-0.5, 1.0]
    assert margin_loss(s, labels, 1.0).tolist() == [-1.0, 1.0]
    # M = 2R / (w_out h_out): a 5x5 region of a 32x32 map
    assert margin_from_region(25, 32, 32) == pytest.approx(50 / 1024)


def test_margin_loss_gradient_flows_through_heaviside():
    logits = torch.randn(4, 10, 8, 8, requires_grad=True)
    total_loss(heaviside(logits), torch.randint(0, 10, (4,)), margin=0.5, sigma=1.0).backward()
    assert logits.grad.abs().sum() > 0


def test_one_hot_penalty_range():
    s = torch.zeros(1, 3, 2, 2)
    s[0, 1] = 1
    assert one_hot_penalty(s).item() == -1.0
    assert one_hot_penalty(torch.ones(1, 3, 2, 2)).item() == 0.0


@pytest.mark.parametrize("margin", [-0.5, 0.0])
def test_bad_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        margin_loss(torch.zeros(1, 3, 2, 2), torch.tensor([0]), margin)
