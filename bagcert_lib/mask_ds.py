"""PatchGuard's robust masking on Derandomized Smoothing's column ablations (Mask-DS; Xiang,
Bhagoji, Sehwag & Mittal, 2021), a second certificate of a DS column base classifier.

Code cited: inspire-group/PatchGuard at 76e4d8f, ``utils/defense_utils.py`` (``masking_defense``
lines 6–48, ``provable_masking`` lines 52–135, ``masking_ds`` lines 188–242) and ``mask_ds.py``
(band b = 4 and patch 5 × 5 on CIFAR-10, lines 86–91; the evaluation, lines 123–140).

**Local features.** Column ablation j keeps columns j … j+b−1 mod W (:mod:`.smoothing`). The
feature of position j is the base classifier's softmax on that ablation, u_{j,c} ∈ [0, 1]
(``masking_ds`` lines 203–227): a 1 × W map of C-vectors. They are PatchGuard's local features
with nothing to clip (clipping to [0, ∞) changes nothing).

**Windows.** A patch at columns c … c+w−1 meets the bands of positions c−b+1 … c+w−1 mod W: one
*cyclic* window of k = min(b + w − 1, W) consecutive positions (``masking_ds`` line 233; patch
height does not matter for column bands). Windows are rows of a boolean membership matrix over
the W positions: the defense may mask any of the W cyclic windows s, s+1, …, s+k−1 (mod W); the
adversary's evidence lies in the window of one of the W − w + 1 patch positions
(:func:`patch_windows`; a patch lies inside the image, the other w − 1 cyclic windows no patch
fills). For c < b − 1 that window wraps around the end of the map.

**Defense** (Algorithm 1, as :mod:`.patchguard`): with t_c = Σ_j u_{j,c} and m_c the largest
sum of u_c over a cyclic window, ũ_c = t_c − m_c if t_c > 0 and m_c > T t_c, else t_c; the
prediction is argmax_c ũ_c (T = 0 by default, ``mask_ds.py``'s ``--thres``).

**Provable analysis** (Algorithm 2, as :mod:`.patchguard`, over the membership matrices): for
every patch window w, U_c(w) = (t_c − Σ_w u_c) / (1 − T) for c ≠ c_t and
L(w) = Σ_{∉w} u_{c_t} − max_{w′} Σ_{w′ ∖ w} u_{c_t} (w′ over the defense's windows; Σ_{w′∖w}
from a (P, W) × (W, W) product per sample). Certified iff L(w) > max_{c ≠ c_t} U_c(w) for every
w, in float64, a difference within 10⁻⁹ (1 + Σ u) counting as a tie, never certified.

**Windows in the authors' code.** The analysis as first released (``defense_utils.py`` up to
80c57c1: lines 18 and 60, called from lines 214–215) slides linear windows [x, x+k) over the W
positions, in the defense and in the analysis, so it misses the patches at the left edge whose
bands wrap. The current code wraps the windows (``ds=True``: lines 19–20, 35–36, 66–67, 89–90,
106–108), but after zeroing w recomputes only the windows that start within k of w's start
without wrapping (lines 115–116): the wrapped neighbours keep their unmasked sums, which
overestimates the masked window and loosens L (still sound at T = 0). Ours uses the cyclic windows
the wrap-around bands require, in the defense and in the analysis, and the exact Σ_{w′∖w} of
every pair.
"""
from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F

from . import smoothing
from .attack import AttackResult, patch_mask, pgd_patch
from .certifier import _pair, _sync, patch_label
from .local_logits import LocalCertificate
from .patchguard import THRESHOLD, TOL
from .runtime import autocast

CONDITION = "Mask-DS"
KIND = "column"


# --------------------------------------------------------------------------- features, windows

def features(model, x: torch.Tensor, size: int, *, amp: bool | None = None,
             chunk: int | None = None) -> torch.Tensor:
    """u (B, C, W) float32: the base classifier's softmax on column ablation j (band width
    ``size``) of each image, at position j; the forward passes of :func:`.smoothing.vote_counts`."""
    return smoothing.ablation_softmax(model, x, KIND, size, amp=amp, chunk=chunk).transpose(1, 2)


def window_width(size: int, patch_w: int, width: int) -> int:
    """k = min(b + w − 1, W): the positions whose bands a patch w columns wide can meet (Δ)."""
    return min(int(size) + int(patch_w) - 1, int(width))


def defense_windows(width: int, k: int, device=None) -> torch.Tensor:
    """(W, W) bool: row s is the cyclic window s, s+1, …, s+k−1 (mod W) the defense may mask."""
    return smoothing._band(torch.arange(width, device=device), k, width)


def patch_windows(size: int, patch_w: int, width: int, device=None) -> torch.Tensor:
    """(W − w + 1, W) bool: row c holds the positions c−b+1 … c+w−1 (mod W), those whose bands
    meet a patch at columns c … c+w−1."""
    c = torch.arange(width - patch_w + 1, device=device)
    return smoothing._band((c - size + 1) % width, window_width(size, patch_w, width), width)


def _features_grad(model, a: torch.Tensor, size: int, amp) -> torch.Tensor:
    """:func:`features` of the iterates ``a``, differentiable in ``a`` (one forward pass)."""
    B, _, H, W = a.shape
    inputs = smoothing.ablate(a, smoothing.ablation_masks(KIND, size, (H, W), a.device))
    with autocast(a.device, amp):
        logits = model(inputs)
    return logits.float().softmax(1).view(B, W, -1).transpose(1, 2)


# --------------------------------------------------------------------------- Algorithms 1 and 2

def masked_evidence(u: torch.Tensor, windows: torch.Tensor,
                    threshold: float = THRESHOLD) -> torch.Tensor:
    """ũ_c of Algorithm 1 for every class: (B, C), from u (B, C, N) and the defense's windows
    (K, N) bool; differentiable in u."""
    total = u.sum(-1)
    best = (u @ windows.to(u.dtype).T).amax(-1)
    mask = (total > 0) & (best > threshold * total)
    return total - torch.where(mask, best, torch.zeros_like(best))


def predict(u: torch.Tensor, windows: torch.Tensor, threshold: float = THRESHOLD) -> torch.Tensor:
    """The robust masking prediction argmax_c ũ_c in float64 (ties: the smaller class index)."""
    return masked_evidence(u.to(torch.float64), windows, threshold).argmax(1)


def certify_windows(u: torch.Tensor, labels: torch.Tensor, defense: torch.Tensor,
                    adversary: torch.Tensor, threshold: float = THRESHOLD):
    """Algorithm 2 on features u (B, C, N) for the defense's windows (D, N) and the windows
    that may hold the adversary's evidence (P, N), both bool membership matrices. Returns
    (correct, certified, the weakest adversary window, its class c*), each (B,)."""
    u = u.to(torch.float64)
    B, C, N = u.shape
    labels = labels.to(u.device).long()
    Md, Ma = defense.to(u.device, u.dtype), adversary.to(u.device, u.dtype)
    b = torch.arange(B, device=u.device)
    total = u.sum(-1)                                                  # t_c (B, C)
    tol = TOL * (1 + total.sum(1))                                     # (B,)
    Sd = u @ Md.T                                                      # Σ_{w′} u (B, C, D)
    best = Sd.amax(-1)
    masked = total - torch.where((total > 0) & (best > threshold * total), best,
                                 torch.zeros_like(best))
    is_true = F.one_hot(labels, C).bool()
    correct = masked[b, labels] > masked.masked_fill(is_true, float("-inf")).amax(1) + tol
    outside = total[:, :, None] - u @ Ma.T                             # Σ_{∉w} u (B, C, P)
    wrong = (outside / (1 - threshold)).masked_fill(is_true[:, :, None], float("-inf"))
    upper, target = wrong.max(1)                                       # max_c U_c(w) (B, P)
    ut = u[b, labels]                                                  # (B, N)
    inter = (ut[:, None, :] * Ma[None]) @ Md.T                         # Σ_{w′∩w} u_t (B, P, D)
    rest = Sd[b, labels][:, None, :] - inter                           # Σ_{w′∖w} u_t
    lower = outside[b, labels] - rest.amax(-1)                         # L(w) (B, P)
    worst, pos = (lower - upper - tol[:, None]).min(1)
    return correct, correct & (worst > 0), pos, target.gather(1, pos[:, None]).squeeze(1)


def certify(u: torch.Tensor, labels: torch.Tensor, size: int, patch, *, image_size=None,
            threshold: float = THRESHOLD) -> LocalCertificate:
    """Mask-DS's certificate for one patch shape (h, w) (only w matters) on features u
    (B, C, W) of band width ``size``: correct, certified, and the weakest patch position (its
    column; its row centred, ``image_size`` = (H, W), default square) and class c*."""
    B, C, N = u.shape
    H, W = _pair(image_size, "image_size") if image_size is not None else (N, N)
    if W != N:
        raise ValueError(f"features of {N} positions do not fit an image {W} wide")
    h, w = _pair(patch, "patch")
    smoothing.affected_ablations(KIND, size, (h, w), (H, W))            # patch fits the image
    k = window_width(size, w, W)
    correct, certified, pos, target = certify_windows(
        u, labels, defense_windows(W, k, u.device), patch_windows(size, w, W, u.device),
        threshold)
    row = torch.full_like(pos, (H - h) // 2)
    return LocalCertificate(correct=correct, certified=certified, target=target, row=row, col=pos)


# --------------------------------------------------------------------------- a data loader

def certify_model(model, batches, patches, *, size: int, theta: float | None = None,
                  threshold: float = THRESHOLD, device=None, amp: bool | None = None,
                  progress: bool = True, chunk: int | None = None,
                  desc: str = "certify Mask-DS") -> pd.DataFrame:
    """Clean (robust masking) and certified accuracy of Mask-DS for every patch shape over a
    data loader, rows as :func:`bagcert_lib.smoothing.certify_model`'s (condition "Mask-DS").

    With ``theta``, the same forward passes also give DS's certificate (votes (u ≥ θ) summed
    over positions, :func:`.smoothing.certify_counts`): its rows, condition "DS", come first and
    equal :func:`.smoothing.certify_model`'s. ``forward_s`` is the shared forward time,
    ``certify_s`` each condition's own."""
    from tqdm import tqdm

    size = smoothing._check(KIND, size)
    if theta is not None and not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must lie in [0, 1], got {theta!r}")
    patches = [_pair(p, "patch") for p in patches]
    if not patches:
        raise ValueError("give at least one patch shape")
    device = device or next(model.parameters()).device
    conditions = (["DS"] if theta is not None else []) + [CONDITION]
    counts = {(c, p): [0, 0] for c in conditions for p in patches}
    times = {(c, p): 0.0 for c in conditions for p in patches}
    checked = set()
    n, t_forward = 0, 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        image_size = tuple(x.shape[-2:])
        if image_size not in checked:   # validates the patch shapes before any forward pass
            for p in patches:
                smoothing.affected_ablations(KIND, size, p, image_size)
            checked.add(image_size)
        _sync(device)
        t0 = time.perf_counter()
        u = features(model, x, size, amp=amp, chunk=chunk)
        _sync(device)
        t_forward += time.perf_counter() - t0
        votes = (u >= theta).sum(2) if theta is not None else None
        for p in patches:
            if votes is not None:
                t1 = time.perf_counter()
                res = smoothing.certify_counts(
                    votes, y, smoothing.affected_ablations(KIND, size, p, image_size))
                counts["DS", p][0] += int(res.correct.sum())
                counts["DS", p][1] += int(res.certified.sum())
                _sync(device)
                times["DS", p] += time.perf_counter() - t1
            t1 = time.perf_counter()
            cert = certify(u, y, size, p, image_size=image_size, threshold=threshold)
            counts[CONDITION, p][0] += int(cert.correct.sum())
            counts[CONDITION, p][1] += int(cert.certified.sum())
            _sync(device)
            times[CONDITION, p] += time.perf_counter() - t1
        n += len(y)
    if n == 0:
        raise ValueError("the data loader yielded no samples")
    df = pd.DataFrame([{"patch": patch_label(p), "patch_h": p[0], "patch_w": p[1],
                        "condition": c, "n": n, "clean_accuracy": counts[c, p][0] / n,
                        "certified_accuracy": counts[c, p][1] / n, "forward_s": t_forward,
                        "certify_s": times[c, p]} for c in conditions for p in patches])
    df.attrs.update(forward_s=t_forward, certify_s=sum(times.values()), n=n, kind=KIND,
                    size=size, theta=theta, threshold=threshold)
    return df


# --------------------------------------------------------------------------- attack

def attack(model, x, y, patch=5, *, size: int, steps: int = 100, step_size: float = 0.025,
           amp: bool | None = None, generator=None, threshold: float = THRESHOLD,
           chunk: int | None = None, **_) -> AttackResult:
    """PGD (:func:`~bagcert_lib.attack.pgd_patch`) on the patch at the weakest window's patch
    position (rows centred), raising the masked evidence ũ of that window's class c* over the
    true class's; broken when the masked prediction (float64) is not the label."""
    y = y.to(x.device).long()
    H, W = x.shape[-2:]
    h, w = _pair(patch, "patch")
    cert = certify(features(model, x, size, amp=amp, chunk=chunk), y, size, (h, w),
                   image_size=(H, W), threshold=threshold)
    windows = defense_windows(W, window_width(size, w, W), x.device)
    mask = patch_mask(x.shape, cert.row, cert.col, (h, w), x.device)

    def evaluate(a, live):
        v = _features_grad(model, a, size, amp)
        t, c = y[live], cert.target[live]
        g = masked_evidence(v, windows, threshold)
        objective = g.gather(1, c[:, None]).squeeze(1) - g.gather(1, t[:, None]).squeeze(1)
        return predict(v.detach(), windows, threshold) != t, objective

    images, broken = pgd_patch(model, x, mask, evaluate, steps=steps, step_size=step_size,
                               generator=generator)
    return AttackResult(images=images, row=cert.row, col=cert.col, target=cert.target,
                        clean_correct=cert.correct, adv_correct=cert.correct & ~broken,
                        flipped=cert.correct & broken, certificate=cert)
