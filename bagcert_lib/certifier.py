"""Certification of patch robustness (§3.1) for the spatial sum aggregator g_Σ.

For an input with label c_t and region scores s in [0, 1]^(C x H x W), let
Δ_{i,j,c} = s_{i,j,c_t} - s_{i,j,c}. A patch at region l can only change the scores in R(l),
the outputs whose receptive fields overlap l. Then

* Condition 3.2 (per region):  min_{c != c_t} Σ_{(i,j) ∉ R(l)} Δ_{i,j,c} > #R(l)  for all l ∈ L,
* Condition 3.3 (global):      min_{c != c_t} Σ_{i,j} Δ_{i,j,c} > 2 R_max(L),

each of which implies Condition 3.1 (robustness of g_Σ's prediction). The sums over R(l) are
taken for all patch positions at once from a summed-area table (Crow, 1984), on the scores' device.
Both hold for scores in [0, 1] (sigmoid/softmax heads), not only {0, 1}: the proof only uses
0 <= s <= 1. Inequalities are strict: a tie is neither correct nor certified.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import torch

# Differences within TIE_TOL * (number of region scores) count as ties. Sums run in float64,
# whose rounding error on <= 10^6 terms in [-1, 1] is far below this; for {0, 1} scores all
# sums are integers, so the tolerance changes nothing there.
TIE_TOL = 1e-9


def _pair(v, name):
    if isinstance(v, int):
        v = (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2 or min(v) < 1:
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {v!r}")
    return v


def _check_rf(rf):
    rf = _pair(rf, "rf")
    if any(r % 2 == 0 for r in rf):
        raise ValueError(f"receptive field must be odd (centred windows), got {rf}")
    return rf


def affected_range(n_in: int, n_out: int, patch: int, rf: int, stride: int):
    """For every patch start a in [0, n_in - patch] along one axis, the output index range
    [first, last] of R(l): outputs i whose window [i*stride - r, i*stride + r] (r = (rf-1)/2)
    meets [a, a + patch - 1], clipped to [0, n_out - 1] (§3.2)."""
    r = (rf - 1) // 2
    a = torch.arange(n_in - patch + 1)
    first = torch.div(a - r + stride - 1, stride, rounding_mode="floor").clamp(0, n_out - 1)
    last = torch.div(a + patch - 1 + r, stride, rounding_mode="floor").clamp(0, n_out - 1)
    # if a patch touches no output at all (only possible with a too small output), |R(l)| = 0
    empty = (a + patch - 1 + r) < 0
    return first, torch.where(empty, first - 1, last)


@dataclass
class Certificate:
    """Per-sample results, each a bool tensor of shape (B,)."""

    correct: torch.Tensor            # g_Σ(s)_{c_t} > g_Σ(s)_c for all c != c_t
    certified: torch.Tensor          # Condition 3.2 (implies correct)
    certified_global: torch.Tensor   # Condition 3.3 (implies correct)
    margin: torch.Tensor             # min over l, c != c_t of Σ_{∉R(l)} Δ_c - |R(l)| (float64)
    r_max: int                       # R_max(L) = max_l |R(l)|
    target: torch.Tensor             # c*: the class of that minimum (App. A.2's target), (B,)
    row: torch.Tensor                # l*: top-left patch pixel of that minimum, (B,)
    col: torch.Tensor

    def summary(self) -> dict:
        n = len(self.correct)
        return {"n": n, "clean_accuracy": self.correct.float().mean().item(),
                "certified_accuracy": self.certified.float().mean().item(),
                "certified_global_accuracy": self.certified_global.float().mean().item()}


class _Geometry:
    def __init__(self, shape, patch, rf, stride, image_size):
        _, _, self.h_out, self.w_out = shape
        self.patch = _pair(patch, "patch")
        self.rf = _check_rf(rf)
        self.stride = _pair(stride, "stride")
        self.image_size = _pair(image_size, "image_size") if image_size is not None else (
            self.h_out * self.stride[0], self.w_out * self.stride[1])
        ph, pw = self.patch
        if ph > self.image_size[0] or pw > self.image_size[1]:
            raise ValueError(f"patch {ph}x{pw} is larger than the image "
                             f"{self.image_size[0]}x{self.image_size[1]}")


def _region_ranges(geo: _Geometry, device):
    r0, r1 = affected_range(geo.image_size[0], geo.h_out, geo.patch[0], geo.rf[0], geo.stride[0])
    c0, c1 = affected_range(geo.image_size[1], geo.w_out, geo.patch[1], geo.rf[1], geo.stride[1])
    return [t.to(device) for t in (r0, r1, c0, c1)]


def summed_area(delta: torch.Tensor) -> torch.Tensor:
    """Summed-area table with a zero first row/column: P[..., i, j] = Σ_{<i, <j} delta (float64)."""
    P = delta.to(torch.float64).cumsum(-1).cumsum(-2)
    return torch.nn.functional.pad(P, (1, 0, 1, 0))


def region_sums(P: torch.Tensor, r0, r1, c0, c1) -> torch.Tensor:
    """Σ over R(l) for every l = (row start, column start): (..., L_rows, L_cols)."""
    rows_hi, rows_lo = P.index_select(-2, r1 + 1), P.index_select(-2, r0)
    return (rows_hi.index_select(-1, c1 + 1) - rows_hi.index_select(-1, c0)
            - rows_lo.index_select(-1, c1 + 1) + rows_lo.index_select(-1, c0))


class ScoreMaps:
    """The pieces of §3.1 that do not depend on the patch shape: Δ, its summed-area table and
    the global sums. Build once per batch, then :meth:`certify` each patch shape cheaply."""

    def __init__(self, scores: torch.Tensor, labels: torch.Tensor):
        if scores.dim() != 4:
            raise ValueError(f"scores must be (B, C, H, W), got shape {tuple(scores.shape)}")
        B, C, H, W = scores.shape
        labels = labels.to(scores.device).long()
        if labels.shape != (B,):
            raise ValueError(f"labels must have shape ({B},), got {tuple(labels.shape)}")
        s = scores.to(torch.float64)
        true = s.gather(1, labels.view(B, 1, 1, 1).expand(B, 1, H, W))
        delta = true - s                                       # Δ_{i,j,c}; zero for c = c_t
        self.shape, self.labels = scores.shape, labels
        self.is_true = torch.nn.functional.one_hot(labels, C).bool()  # (B, C)
        self.P = summed_area(delta)                            # (B, C, H+1, W+1)
        self.total = self.P[:, :, -1, -1]                      # Σ_{i,j} Δ_{i,j,c}
        self.tol = TIE_TOL * H * W
        other = self.total.masked_fill(self.is_true, float("inf"))
        self.min_total = other.min(1).values                   # min_{c != c_t} Σ Δ
        self.correct = self.min_total > self.tol

    def worst_case(self, patch, rf, stride=1, image_size=None, chunk_elems: int = 1 << 25):
        """Condition 3.2's quantity m(l, c) = Σ_{∉R(l)} Δ_c - #R(l), minimised over c != c_t and l.

        Returns (margin (B,) float64, c* (B,), row* (B,), col* (B,), #R(l) table (L_r, L_c)),
        where (row*, col*) is the top-left input pixel of the arg-min patch position l*.
        Classes are processed in chunks so that memory stays bounded for 1000 classes.
        """
        geo = _Geometry(self.shape, patch, rf, stride, image_size)
        r0, r1, c0, c1 = _region_ranges(geo, self.P.device)
        area = ((r1 - r0 + 1)[:, None] * (c1 - c0 + 1)[None, :]).to(torch.float64)
        B, C = self.total.shape
        L = area.numel()
        step = max(1, chunk_elems // max(1, B * L))
        best = torch.full((B,), float("inf"), dtype=torch.float64, device=self.P.device)
        arg = torch.zeros(B, dtype=torch.long, device=self.P.device)
        for k in range(0, C, step):
            inside = region_sums(self.P[:, k:k + step], r0, r1, c0, c1)   # Σ_{∈R(l)} Δ_c
            m = self.total[:, k:k + step, None, None] - inside - area
            m = m.masked_fill(self.is_true[:, k:k + step, None, None], float("inf"))
            val, idx = m.flatten(1).min(1)
            better = val < best
            best = torch.where(better, val, best)
            arg = torch.where(better, idx + k * L, arg)
        cls, pos = arg // L, arg % L
        return best, cls, pos // area.shape[1], pos % area.shape[1], area

    def certify(self, patch, rf, stride=1, image_size=None) -> Certificate:
        margin, target, row, col, area = self.worst_case(patch, rf, stride, image_size)
        r_max = int(area.max().item())
        return Certificate(
            correct=self.correct,
            certified=self.correct & (margin > self.tol),
            certified_global=self.correct & (self.min_total > 2 * r_max + self.tol),
            margin=margin, r_max=r_max, target=target, row=row, col=col)


def certify(scores: torch.Tensor, labels: torch.Tensor, patch, rf, stride=1,
            image_size=None) -> Certificate:
    """Certify g_Σ(s) against an h x w patch at every position (Conditions 3.2 and 3.3, §3.1).

    scores: region scores (B, C, H_out, W_out) in [0, 1]; labels: (B,); patch: int or (h, w);
    rf, stride: the region scorer's receptive field and output stride (int or (h, w) pairs);
    image_size: input (H, W), default (H_out * stride, W_out * stride).
    """
    return ScoreMaps(scores, labels).certify(patch, rf, stride, image_size)


def patch_label(patch) -> str:
    h, w = _pair(patch, "patch")
    return f"{h}x{w}"


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def certify_model(model, batches: Iterable, patches: Sequence, *, head: str = "heaviside",
                  device=None, amp: bool | None = None, progress: bool = True,
                  desc: str = "certify") -> pd.DataFrame:
    """Certify ``model`` over a data loader for many patch shapes, one forward pass per batch.

    ``batches`` yields (images in [0, 1], labels). Returns one row per (patch, condition) with
    n, clean_accuracy, certified_accuracy, and timings: ``forward_s`` (the whole forward pass
    incl. head, shared by all rows) and ``certify_s`` (the certification of that patch shape).
    """
    from tqdm import tqdm

    from .runtime import region_scores

    patches = [_pair(p, "patch") for p in patches]
    if not patches:
        raise ValueError("give at least one patch shape")
    rf, stride = model.receptive_field, model.stride
    device = device or next(model.parameters()).device
    counts = {p: [0, 0] for p in patches}         # certified (3.2), certified_global (3.3)
    times = {p: 0.0 for p in patches}
    n = correct = 0
    t_forward = t_prep = 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        _sync(device)
        t0 = time.perf_counter()
        s = region_scores(model, x, head=head, amp=amp)
        _sync(device)
        t1 = time.perf_counter()
        maps = ScoreMaps(s, y)
        correct += int(maps.correct.sum())
        n += len(y)
        _sync(device)
        t2 = time.perf_counter()
        t_forward += t1 - t0
        t_prep += t2 - t1
        for p in patches:
            t3 = time.perf_counter()
            c = maps.certify(p, rf, stride, image_size=tuple(x.shape[-2:]))
            counts[p][0] += int(c.certified.sum())
            counts[p][1] += int(c.certified_global.sum())
            _sync(device)
            times[p] += time.perf_counter() - t3
    if n == 0:
        raise ValueError("the data loader yielded no samples")
    rows = []
    for p in patches:
        for cond, k in (("3.2", 0), ("3.3", 1)):
            rows.append({"patch": patch_label(p), "patch_h": p[0], "patch_w": p[1],
                         "condition": cond, "n": n, "clean_accuracy": correct / n,
                         "certified_accuracy": counts[p][k] / n,
                         "forward_s": t_forward,
                         "certify_s": times[p] + t_prep / len(patches)})
    df = pd.DataFrame(rows)
    df.attrs.update(forward_s=t_forward, certify_s=t_prep + sum(times.values()), n=n,
                    rf=rf, stride=stride, head=head)
    return df
