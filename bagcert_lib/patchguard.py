"""PatchGuard's robust masking on a BagNet (Mask-BN; Xiang, Bhagoji, Sehwag & Mittal, 2021),
with its provable analysis and its provable adversarial training.

Code cited: inspire-group/PatchGuard, ``utils/defense_utils.py`` (``masking_defense`` lines
6–48, ``provable_masking`` lines 52–135) and ``nets/bagnet.py`` (the ``adv`` aggregation, lines
147–158).

**Defense** (Algorithm 1). Local features are the region logits clipped to [0, c_h],
u = min(max(z, 0), c_h) (c_h = ∞ by default, ``defense_utils.py`` lines 23–26). For every class
c, with total evidence t_c = Σ_{i,j} u_{i,j,c} and the largest evidence in one k_h × k_w window
m_c = max_w Σ_{(i,j) ∈ w} u_{i,j,c} (k: ``local_logits.window_shape``), the defense masks that
window if it holds more than a fraction T of the class's evidence:

    ũ_c = t_c − m_c   if t_c > 0 and m_c / t_c > T,   else t_c,

and predicts argmax_c ũ_c. The window depends on the patch shape it defends against, so clean
accuracy does too.

**Provable analysis** (Algorithm 2). For every window w that could hold R(l):

* a wrong class c ends with at most U_c(w) = (t_c − Σ_w u_c) / (1 − T) (Lemma 1: the masked
  window holds at least the adversary's evidence in w; unmasked, that evidence is at most a
  fraction T of the total);
* the true class c_t ends with at least
  L(w) = Σ_{∉w} u_{c_t} − max_{w'} Σ_{w' ∖ w} u_{c_t}: the adversary zeroes c_t on w (ũ only
  grows with any single value: the total grows by δ, the largest window by at most δ), and
  the defense may then mask the best remaining window.

The prediction is certified iff L(w) > max_{c ≠ c_t} U_c(w) for every window w. This L holds for
every T; it is what ``provable_masking`` computes (lines 104–126) at T = 0, the paper's main
setting, where a window is always masked.

**Training** (``nets/bagnet.py`` lines 147–158): cross-entropy on
(Σ_{i,j} u_{i,j,c} − 1[c = c_t] m_{c_t}) / (H W): the true class loses its best window, as the
defense may make it.
"""
from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F

from .attack import AttackResult
from .certifier import _pair, _sync, patch_label
from .local_logits import (LocalCertificate, local_logits, patch_origin, pgd_at_weakest,
                           summed_area, window_sums, window_shape)
from .runtime import autocast

CONDITION = "Mask-BN"
#: detection threshold T of the paper's main results (``mask_bn.py`` default, README line 11)
THRESHOLD = 0.0
#: relative tolerance of the float64 sums: a difference below it is a tie, never certified
TOL = 1e-9


def features(z: torch.Tensor, clip_max: float | None = None) -> torch.Tensor:
    """u = min(max(z, 0), c_h): PatchGuard's clipped local features (c_h = ∞ when None)."""
    return z.clamp(min=0, max=clip_max)


def masked_evidence(u: torch.Tensor, window, threshold: float = THRESHOLD) -> torch.Tensor:
    """ũ_c of Algorithm 1 for every class: (B, C), differentiable (window sums by pooling)."""
    kh, kw = window
    total = u.sum((2, 3))
    best = F.avg_pool2d(u, (kh, kw), stride=1).amax((2, 3)) * (kh * kw)
    mask = (total > 0) & (best > threshold * total)
    return total - torch.where(mask, best, torch.zeros_like(best))


def predict(z, window, threshold: float = THRESHOLD, clip_max=None) -> torch.Tensor:
    """The robust masking prediction argmax_c ũ_c (ties: the smaller class index)."""
    return masked_evidence(features(z.float(), clip_max), window, threshold).argmax(1)


def _masked_evidence64(u, S, threshold):
    total = u.sum((2, 3))
    best = S.amax((2, 3))
    return total - torch.where((total > 0) & (best > threshold * total), best, torch.zeros_like(best))


def true_class_lower_bound(ut: torch.Tensor, window, chunk_elems: int = 1 << 24) -> torch.Tensor:
    """L(w) = Σ_{∉w} u − max_{w'} Σ_{w' ∖ w} u for every window w of the true class's map
    ut (B, H, W): (B, n_h, n_w), from the overlaps of all window pairs (summed-area table)."""
    kh, kw = window
    B, H, W = ut.shape
    nh, nw = H - kh + 1, W - kw + 1
    dev = ut.device

    def overlap(n, k):      # per pair (a, a'): the overlap's [start, end) in the map
        a = torch.arange(n, device=dev)
        lo = torch.maximum(a[:, None], a[None, :])
        hi = torch.maximum(lo, torch.minimum(a[:, None], a[None, :]) + k)
        return lo.flatten(), hi.flatten()

    r0, r1 = overlap(nh, kh)
    c0, c1 = overlap(nw, kw)
    out = torch.empty(B, nh, nw, dtype=torch.float64, device=dev)
    step = max(1, chunk_elems // (nh * nh * nw * nw))
    for i in range(0, B, step):
        P = summed_area(ut[i:i + step])                              # (b, H+1, W+1)
        S = window_sums(ut[i:i + step], window)                      # (b, nh, nw)
        hi_r, lo_r = P.index_select(1, r1), P.index_select(1, r0)    # (b, nh², W+1)
        inter = (hi_r.index_select(2, c1) - hi_r.index_select(2, c0)
                 - lo_r.index_select(2, c1) + lo_r.index_select(2, c0))   # (b, nh², nw²)
        inter = inter.view(-1, nh, nh, nw, nw)                       # w = (a, c), w' = (a', c')
        rest = S[:, None, :, None, :] - inter                        # Σ_{w' ∖ w}
        out[i:i + step] = P[:, -1, -1, None, None] - S - rest.amax((2, 4))
    return out


def certify(z: torch.Tensor, labels: torch.Tensor, patch, rf, stride=1, image_size=None,
            threshold: float = THRESHOLD, clip_max=None) -> LocalCertificate:
    """Algorithm 2 for one patch shape on region logits z (B, C, H, W): correct (the masked
    prediction is the label), certified, and the weakest window's patch position and class."""
    B, C, H, W = z.shape
    labels = labels.to(z.device).long()
    image_size = tuple(image_size) if image_size is not None else (H * _pair(stride, "s")[0],
                                                                    W * _pair(stride, "s")[1])
    window = window_shape(patch, rf, stride, image_size, (H, W))
    u = features(z.to(torch.float64), clip_max)
    S = window_sums(u, window)                                         # (B, C, nh, nw)
    total = u.sum((2, 3))
    tol = TOL * (1 + total.sum(1))                                     # (B,)
    masked = _masked_evidence64(u, S, threshold)
    is_true = F.one_hot(labels, C).bool()
    correct = masked.gather(1, labels[:, None]).squeeze(1) > \
        masked.masked_fill(is_true, float("-inf")).amax(1) + tol
    outside = total[:, :, None, None] - S                              # evidence outside w
    wrong = (outside / (1 - threshold)).masked_fill(is_true[:, :, None, None], float("-inf"))
    upper, target = wrong.max(1)                                       # (B, nh, nw)
    out_t = outside[torch.arange(B), labels]
    lower = out_t - S[torch.arange(B), labels].amax((1, 2))[:, None, None]   # a lower bound of L
    t = tol[:, None, None]
    exact = correct & ((lower <= upper + t) & (out_t > upper + t)).flatten(1).any(1)
    if exact.any():
        idx = exact.nonzero().squeeze(1)
        lower[idx] = true_class_lower_bound(u[idx, labels[idx]], window)
    gap = (lower - upper - t).flatten(1)
    worst, pos = gap.min(1)
    certified = correct & (worst > 0)
    nw = S.shape[-1]
    row, col = patch_origin(pos // nw, pos % nw, window, patch, rf, stride, image_size)
    return LocalCertificate(correct=correct, certified=certified,
                            target=target.flatten(1).gather(1, pos[:, None]).squeeze(1),
                            row=row, col=col)


def loss(model, x, y, cfg, device) -> torch.Tensor:
    """Provable adversarial training (``nets/bagnet.py`` lines 147–158): cross-entropy on the
    mean clipped evidence, the true class without its best k_h × k_w window (k from the run's
    ``eval_patch``)."""
    with autocast(device, cfg.amp):
        z = model(x)
    u = features(z.float())
    B, C, H, W = u.shape
    window = window_shape(cfg.eval_patch, model_rf(model), model_stride(model),
                          (H * model_stride(model), W * model_stride(model)), (H, W))
    ut = u[torch.arange(B, device=u.device), y]                          # (B, H, W)
    best = F.avg_pool2d(ut[:, None], window, stride=1).amax((1, 2, 3)) * (window[0] * window[1])
    g = u.sum((2, 3)) - F.one_hot(y, C).to(u.dtype) * best[:, None]
    return F.cross_entropy(g / (H * W), y)


def model_rf(model) -> int:
    m = getattr(model, "module", getattr(model, "_orig_mod", model))     # DDP / compiled
    return m.receptive_field


def model_stride(model) -> int:
    m = getattr(model, "module", getattr(model, "_orig_mod", model))
    return m.stride


def certify_model(model, batches, patches, *, device=None, amp=None, progress=True,
                  threshold: float = THRESHOLD, desc="certify Mask-BN") -> pd.DataFrame:
    """Clean (robust masking) and certified accuracy of Mask-BN for every patch shape, one
    forward pass per batch; rows as :func:`bagcert_lib.certifier.certify_model`'s."""
    from tqdm import tqdm

    device = device or next(model.parameters()).device
    patches = [_pair(p, "patch") for p in patches]
    counts = {p: [0, 0] for p in patches}
    times = {p: 0.0 for p in patches}
    n, t_forward = 0, 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        _sync(device)
        t0 = time.perf_counter()
        z = local_logits(model, x, amp)
        _sync(device)
        t_forward += time.perf_counter() - t0
        for p in patches:
            t1 = time.perf_counter()
            cert = certify(z, y, p, model.receptive_field, model.stride,
                           image_size=tuple(x.shape[-2:]), threshold=threshold)
            counts[p][0] += int(cert.correct.sum())
            counts[p][1] += int(cert.certified.sum())
            _sync(device)
            times[p] += time.perf_counter() - t1
        n += len(y)
    if n == 0:
        raise ValueError("the data loader yielded no samples")
    df = pd.DataFrame([{"patch": patch_label(p), "patch_h": p[0], "patch_w": p[1],
                        "condition": CONDITION, "n": n, "clean_accuracy": counts[p][0] / n,
                        "certified_accuracy": counts[p][1] / n, "forward_s": t_forward,
                        "certify_s": times[p]} for p in patches])
    df.attrs.update(forward_s=t_forward, certify_s=sum(times.values()), n=n,
                    rf=model.receptive_field, stride=model.stride, threshold=threshold)
    return df


def attack(model, x, y, patch=5, *, steps=100, step_size=0.025, amp=None, generator=None,
           threshold: float = THRESHOLD, **_) -> AttackResult:
    """App. A.2's attack on Mask-BN: PGD on the patch whose R(l) fills the weakest window,
    raising the masked evidence ũ of the class with the largest bound there over c_t's."""
    y = y.to(x.device).long()
    z = local_logits(model, x, amp)
    H, W = z.shape[-2:]
    window = window_shape(patch, model.receptive_field, model.stride, tuple(x.shape[-2:]), (H, W))
    cert = certify(z, y, patch, model.receptive_field, model.stride,
                   image_size=tuple(x.shape[-2:]), threshold=threshold)

    def margin(zz, yy, target):
        # forward: u = max(z, 0); backward: identity, so a class whose logits are all negative
        # (zero gradient through the clip) still has a direction to grow in
        g = masked_evidence(zz + (features(zz) - zz).detach(), window, threshold)
        return g.gather(1, yy[:, None]).squeeze(1) - g.gather(1, target[:, None]).squeeze(1)

    images, broken = pgd_at_weakest(model, x, y, cert, patch, margin,
                                    lambda zz: predict(zz, window, threshold), steps=steps,
                                    step_size=step_size, amp=amp, generator=generator)
    return AttackResult(images=images, row=cert.row, col=cert.col, target=cert.target,
                        clean_correct=cert.correct, adv_correct=cert.correct & ~broken,
                        flipped=cert.correct & broken, certificate=cert)
