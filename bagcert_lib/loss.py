"""The training objective (§3.3): a margin loss derived from the certificate.

With Δ(i, j, c) = s(i, j, cₜ) − s(i, j, c) (:mod:`bagcert_lib.certifier`), Condition 3.3 certifies
an image against every patch whose affected region has at most R_max outputs when, for every
class c ≠ cₜ, Σᵢⱼ Δ(i, j, c) > 2 R_max. With a uniform prior R_max ~ U(0, R), the expected 0/1
loss of that condition becomes a margin loss on the normalised sums ::

    D(c) = Σᵢⱼ Δ(i, j, c) / (w_out · h_out)
    L_R  = −min( min over c ≠ cₜ of D(c),  M ),      M = 2R / (w_out · h_out)

so the loss stops rewarding an image once its margin reaches M. The one-hot penalty, added with
weight σ, pushes the normalised global scores S(c) = Σᵢⱼ s(i, j, c) / (w_out · h_out) ∈ [0, 1]
towards one class ::

    L_oh = max over c ≠ c_max of S(c) − S(c_max),      c_max = argmax S(c)

and the objective is L_total = L_R + σ · L_oh, averaged over the batch.
"""
from __future__ import annotations

import torch


def margin_from_region(R: float, h_out: int, w_out: int) -> float:
    """M = 2R / (w_out · h_out): the margin for an affected region of R outputs (§3.3).

    >>> margin_from_region(256, 32, 32)       # R = 256 of 1,024 outputs
    0.5
    """
    return 2.0 * R / (w_out * h_out)


def check_margin(margin: float) -> float:
    """The margin M as a float; a ValueError unless M > 0."""
    margin = float(margin)
    if not margin > 0:
        raise ValueError(f"margin M must be positive (M = 2R / (w_out h_out)), got {margin}")
    return margin


def normalized_delta(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """D(c) = Σᵢⱼ Δ(i, j, c) / (w_out · h_out) for every class: (B, C); zero at c = cₜ."""
    S = scores.float().mean((2, 3))
    return S.gather(1, labels.view(-1, 1)) - S


def margin_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """L_R = −min(min over c ≠ cₜ of D(c), M) per image (§3.3): shape (B,), in [−M, 1].

    ``scores`` (B, C, H, W) in [0, 1] (a head's output), ``labels`` (B,), ``margin`` M > 0.
    """
    margin = check_margin(margin)
    d = normalized_delta(scores, labels)
    d = d.masked_fill(torch.nn.functional.one_hot(labels, d.shape[1]).bool(), float("inf"))
    return -torch.clamp(d.min(1).values, max=margin)


def one_hot_penalty(scores: torch.Tensor) -> torch.Tensor:
    """L_oh = max over c ≠ c_max of S(c) − S(c_max) per image (§3.3): shape (B,), in [−1, 0]."""
    S = scores.float().mean((2, 3))
    top2 = S.topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def total_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float, sigma: float = 0.0):
    """L_total = L_R + σ · L_oh, averaged over the batch (§3.3): what the trainer minimises.

    Example::

        model = cifar_scorer(rf=7, width=32)
        loss = total_loss(heaviside(model(images)), labels, margin=0.5, sigma=0.0)
        loss.backward()
    """
    loss = margin_loss(scores, labels, margin)
    if sigma:
        loss = loss + sigma * one_hot_penalty(scores)
    return loss.mean()
