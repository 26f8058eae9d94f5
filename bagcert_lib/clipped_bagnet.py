"""Clipped BagNet (CBN; Zhang, Yuan, McCoyd & Wagner, 2020): a BagNet whose local logits are
clipped before they are averaged, with its certificate against a patch.

Every region logit passes through φ(z) = tanh(0.05 z − 1) ∈ (−1, 1) (Zhang et al., 2020, §3;
the same constants in inspire-group/PatchGuard ``utils/defense_utils.py`` lines 344 and 371 and
``nets/bagnet.py`` line 145), and the prediction is argmax_c Σ_{i,j} φ(z_{i,j,c}). We use the
equivalent scores s = (φ(z) + 1) / 2 ∈ (0, 1), which order the classes the same way.

**Certificate.** A patch at l changes only the scores in R(l), each to any value in [0, 1]; its
best play against class c_t for class c puts s_{c_t} = 0 and s_c = 1 on all of R(l). With
Δ_{i,j,c} = s_{i,j,c_t} − s_{i,j,c}, the prediction c_t survives every patch iff

    min_{c ≠ c_t} Σ_{(i,j) ∉ R(l)} Δ_{i,j,c} − #R(l) > 0   for all l ∈ L,

which is BagCert's Condition 3.2 (§3.1) on s: :class:`bagcert_lib.certifier.CertifiedCounter`
computes it. For scores that may take both bounds the condition is exact, not only sufficient
(``tests/test_clipped_bagnet.py`` checks both directions by brute force); PatchGuard's
``provable_clipping`` (``defense_utils.py`` lines 351–395) bounds only the runner-up class, we
bound every class.

**Training.** Zhang et al. (2020) clip a BagNet trained as usual: cross-entropy on the mean of
the local logits (``nets/bagnet.py`` lines 138–139, the ``mean`` aggregation), which is
:func:`loss` here.
"""
from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn.functional as F

from .attack import AttackResult
from .certifier import CertifiedCounter, ScoreMaps, _sync
from .local_logits import LocalCertificate, local_logits, pgd_at_weakest
from .runtime import autocast

#: φ(z) = tanh(SCALE · z + SHIFT) (Zhang et al., 2020)
SCALE, SHIFT = 0.05, -1.0
CONDITION = "CBN"


def clipped(z: torch.Tensor) -> torch.Tensor:
    """φ(z) = tanh(0.05 z − 1) ∈ (−1, 1), element-wise."""
    return torch.tanh(SCALE * z + SHIFT)


def scores(z: torch.Tensor) -> torch.Tensor:
    """s = (φ(z) + 1) / 2 ∈ (0, 1): CBN's clipped logits on BagCert's score scale."""
    return (clipped(z.float()) + 1) / 2


def predict(z: torch.Tensor) -> torch.Tensor:
    """CBN's prediction argmax_c Σ_{i,j} φ(z_{i,j,c}) (ties: the smaller class index)."""
    return clipped(z.float()).sum((2, 3)).argmax(1)


def margin(z: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Σ_{i,j} φ(z_{c_t}) − φ(z_{c*}) per sample: what the attack drives below zero."""
    g = clipped(z).sum((2, 3))
    return g.gather(1, y[:, None]).squeeze(1) - g.gather(1, target[:, None]).squeeze(1)


def loss(model, x, y, cfg, device) -> torch.Tensor:
    """BagNet's training loss: cross-entropy on the mean local logit (Zhang et al., 2020)."""
    with autocast(device, cfg.amp):
        z = model(x)
    return F.cross_entropy(z.float().mean((2, 3)), y)


def certify_scores(s: torch.Tensor, labels: torch.Tensor, patch, rf, stride=1,
                   image_size=None) -> LocalCertificate:
    """CBN's certificate for one patch shape from clipped scores s ∈ [0, 1] (B, C, H, W), with
    the weakest (l*, c*) for the attack."""
    cert = ScoreMaps(s, labels).certify(patch, rf, stride, image_size)
    return LocalCertificate(correct=cert.correct, certified=cert.certified, target=cert.target,
                            row=cert.row, col=cert.col)


def certify(z: torch.Tensor, labels, patch, rf, stride=1, image_size=None) -> LocalCertificate:
    """CBN's certificate for one patch shape from region logits z (B, C, H, W)."""
    return certify_scores(scores(z), labels, patch, rf, stride, image_size)


def certify_model(model, batches, patches, *, device=None, amp=None, progress=True,
                  desc="certify CBN") -> pd.DataFrame:
    """Clean and certified accuracy of CBN for every patch shape, one forward pass per batch;
    rows as :func:`bagcert_lib.certifier.certify_model`'s, condition ``CBN``."""
    from tqdm import tqdm

    device = device or next(model.parameters()).device
    counter, t_forward, t_add = None, 0.0, 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device), y.to(device)
        if counter is None:
            counter = CertifiedCounter(patches, model.receptive_field, model.stride,
                                       image_size=tuple(x.shape[-2:]))
        _sync(device)
        t0 = time.perf_counter()
        s = scores(local_logits(model, x, amp))
        _sync(device)
        t1 = time.perf_counter()
        counter.add(s, y, binary=False)
        t_forward += t1 - t0
        t_add += time.perf_counter() - t1
    if counter is None:
        raise ValueError("the data loader yielded no samples")
    t0 = time.perf_counter()
    counts = counter.counts()
    t_shared = (t_add + time.perf_counter() - t0 - counts.seconds.sum()) / len(counts)
    df = pd.DataFrame([{"patch": r.patch, "patch_h": r.patch_h, "patch_w": r.patch_w,
                        "condition": CONDITION, "n": r.n, "clean_accuracy": r.correct / r.n,
                        "certified_accuracy": r.certified / r.n, "forward_s": t_forward,
                        "certify_s": r.seconds + t_shared} for r in counts.itertuples()])
    df.attrs.update(forward_s=t_forward, certify_s=float(df.certify_s.sum()), n=counter.n,
                    rf=model.receptive_field, stride=model.stride)
    return df


def attack(model, x, y, patch=5, *, steps=100, step_size=0.025, amp=None, generator=None,
           **_) -> AttackResult:
    """App. A.2's attack on CBN: PGD on the patch at the (l*, c*) of the weakest bound."""
    y = y.to(x.device).long()
    cert = certify(local_logits(model, x, amp), y, patch, model.receptive_field, model.stride,
                   image_size=tuple(x.shape[-2:]))
    images, broken = pgd_at_weakest(model, x, y, cert, patch, margin, predict, steps=steps,
                                    step_size=step_size, amp=amp, generator=generator)
    return AttackResult(images=images, row=cert.row, col=cert.col, target=cert.target,
                        clean_correct=cert.correct, adv_correct=cert.correct & ~broken,
                        flipped=cert.correct & broken, certificate=cert)
