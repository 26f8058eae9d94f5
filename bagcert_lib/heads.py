"""The last layer of the region scorer: region logits → region scores in [0, 1] (§3.2, App. A.3).

* ``heaviside``: H(x) = 1 if x ≥ 0, else 0, in the forward pass, and the logistic sigmoid's
  derivative σ(x)(1 − σ(x)) in the backward pass (straight-through; Bengio et al., 2013).
  Scores in {0, 1}: each region casts one vote per class.
* ``sigmoid``: the element-wise logistic sigmoid σ(x) = 1 / (1 + e^(−x)). Scores in [0, 1].
* ``softmax``: a softmax over the classes at each position. Scores in [0, 1], Σ_c s(i, j, c) = 1.

The certificate holds for all three (it needs only 0 ≤ s ≤ 1).
"""
from __future__ import annotations

import torch

HEADS = ("heaviside", "sigmoid", "softmax")


class _HeavisideST(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits):
        ctx.save_for_backward(logits)
        return (logits >= 0).to(logits.dtype)  # exactly 0 or 1, H(0) = 1

    @staticmethod
    def backward(ctx, grad):
        (logits,) = ctx.saved_tensors
        s = torch.sigmoid(logits.float())
        return (grad.float() * s * (1 - s)).to(grad.dtype)


def heaviside(logits: torch.Tensor) -> torch.Tensor:
    """H(x) = 1 if x ≥ 0, else 0, with the sigmoid's gradient σ(x)(1 − σ(x)) passed straight through (§3.2).

    >>> heaviside(torch.tensor([-1.0, 0.0, 2.0]))
    tensor([0., 1., 1.])
    """
    return _HeavisideST.apply(logits)


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """σ(x) = 1 / (1 + e^(−x)) element-wise (App. A.3)."""
    return torch.sigmoid(logits)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """s(i, j, c) = e^(x(i, j, c)) / Σ_c′ e^(x(i, j, c′)): a softmax over the classes (dimension 1
    of (B, C, H, W)) at every position (App. A.3)."""
    return torch.softmax(logits, dim=1)


def get_head(name: str):
    """The head called ``name``, one of ``heaviside``, ``sigmoid``, ``softmax``.

    >>> get_head("sigmoid")(torch.zeros(1))
    tensor([0.5000])
    """
    try:
        return {"heaviside": heaviside, "sigmoid": sigmoid, "softmax": softmax}[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {HEADS}") from None
