"""End-to-end training objective (§3.3).

With Δ_{i,j,c} = s_{i,j,c_t} - s_{i,j,c} and a uniform prior over the largest affected region
size R_max ~ U(0, R), the expected 0/1 loss of Condition 3.3 becomes a margin loss:

    L_R(Δ, c_t) = -min( min_{c != c_t} Σ_{i,j} Δ_{i,j,c} / (w_out h_out), M ),  M = 2R / (w_out h_out).

The one-hot penalty L_oh(S) = max_{c != c_max} S_c - S_{c_max} on the normalised global scores
S = g_Σ(s) / (w_out h_out) ∈ [0, 1]^C is added with weight σ.
"""
from __future__ import annotations

import torch


def margin_from_region(R: float, h_out: int, w_out: int) -> float:
    """M = 2R / (w_out h_out): the paper's normalisation of a region-score patch size R."""
    return 2.0 * R / (w_out * h_out)


def check_margin(margin: float) -> float:
    margin = float(margin)
    if not margin > 0:
        raise ValueError(f"margin M must be positive (M = 2R / (w_out h_out)), got {margin}")
    return margin


def normalized_delta(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Σ_{i,j} Δ_{i,j,c} / (w_out h_out) for every class: (B, C); zero at c = c_t."""
    S = scores.float().mean((2, 3))
    return S.gather(1, labels.view(-1, 1)) - S


def margin_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """L_R of §3.3 per sample: -min(min_{c != c_t} mean_{i,j} Δ_{i,j,c}, M). Shape (B,)."""
    margin = check_margin(margin)
    d = normalized_delta(scores, labels)
    d = d.masked_fill(torch.nn.functional.one_hot(labels, d.shape[1]).bool(), float("inf"))
    return -torch.clamp(d.min(1).values, max=margin)


def one_hot_penalty(scores: torch.Tensor) -> torch.Tensor:
    """L_oh(S) = max_{c != c_max} S_c - S_{c_max} ∈ [-1, 0] per sample (§3.3). Shape (B,)."""
    S = scores.float().mean((2, 3))
    top2 = S.topk(2, dim=1).values
    return top2[:, 1] - top2[:, 0]


def total_loss(scores: torch.Tensor, labels: torch.Tensor, margin: float, sigma: float = 0.0):
    """L_total = L_R + σ L_oh, averaged over the batch."""
    loss = margin_loss(scores, labels, margin)
    if sigma:
        loss = loss + sigma * one_hot_penalty(scores)
    return loss.mean()
