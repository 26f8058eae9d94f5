"""Final layer of f_theta: region logits -> region scores in [0, 1] (§3.2 and App. A.3).

* ``heaviside``: H(x) = 1[x >= 0] in the forward pass, the logistic sigmoid's derivative
  s(x)(1 - s(x)) in the backward pass (straight-through, Bengio et al., 2013). Scores in {0, 1}.
* ``sigmoid``: element-wise logistic sigmoid (App. A.3). Scores in [0, 1].
* ``softmax``: channel-wise softmax over classes (App. A.3). Scores in [0, 1], sum_c s = 1.
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
    """Heaviside step with a sigmoid straight-through gradient (§3.2)."""
    return _HeavisideST.apply(logits)


def sigmoid(logits: torch.Tensor) -> torch.Tensor:
    """Element-wise sigmoid head (App. A.3)."""
    return torch.sigmoid(logits)


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Channel-wise softmax head over the class dimension 1 of (B, C, H, W) (App. A.3)."""
    return torch.softmax(logits, dim=1)


def get_head(name: str):
    """Look a head up by name: one of :data:`HEADS`."""
    try:
        return {"heaviside": heaviside, "sigmoid": sigmoid, "softmax": softmax}[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {HEADS}") from None
