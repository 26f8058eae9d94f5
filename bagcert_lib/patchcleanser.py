"""PatchCleanser: double masking (Xiang, Mahloujifar & Mittal, USENIX Security 2022).

Any classifier F becomes certifiably robust to one h × w patch by masking.

* **R-covering mask set** (§3.2; authors' ``utils/defense.py`` ``gen_mask_set``, lines 26-47).
  Per axis of length n, for patch side p and k masks per axis: stride s = ⌈(n − p + 1) / k⌉,
  mask side m = min(p + s − 1, n), mask origins 0, s, 2s, … ≤ n − m, plus n − m. Every patch
  position lies inside at least one mask of the set 𝓜 = {rows} × {cols}.
* **Double masking** (Algorithm 1; ``double_masking``, lines 50-112): the one-mask predictions
  F(x ⊙ r) for r ∈ 𝓜. (I) all agree: return that label. Otherwise, with the majority label ȳ,
  each *disagreer* mask r (F(x ⊙ r) ≠ ȳ, in mask order) is tested by a second round: if
  F(x ⊙ r ⊙ r') = F(x ⊙ r) for every r' ∈ 𝓜, (II) return F(x ⊙ r). (III) else return ȳ.
* **Certificate** (Theorem 1; ``certify_precomputed``, lines 151-154): if F(x ⊙ r ⊙ r') = y for
  every pair r, r' ∈ 𝓜 (r = r' included), double masking returns y for every patch in the
  covered positions. Proof: the covering mask r* hides the patch, so every image masked by r*
  equals the clean one; r* answers y in round one and survives round two, and any disagreer
  with a label t ≠ y fails its round two at r' = r*.

Masked pixels take the value 0.5, grey, the zero of the (x − 0.5) / 0.5 normalisation under
which the authors mask (``torch.where(mask, data, 0.)`` on normalised inputs, line 68) and
train with Cutout (``utils/cutout.py``; the hole is multiplied into the normalised image).

Cost: |𝓜| one-mask and up to |𝓜|(|𝓜| − 1) / 2 two-mask forward passes per image; an image
whose one-mask predictions are not all its label is not certified and skips the pairs, and the
pairs of an image stop at its first wrong prediction.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .attack import patch_mask, pgd_patch
from .certifier import _pair, _sync, patch_label
from .runtime import autocast, forward_batch

#: The value of a masked pixel (grey; see the module docstring).
MASK_VALUE = 0.5
#: The authors' masks per axis for CIFAR-10 and ImageNet (``example_cmd.sh``: ``--num_mask 6``).
NUM_MASKS = 6
#: Masked images per forward pass on a GPU; a CPU takes :func:`~bagcert_lib.runtime.forward_batch`'s.
GPU_BATCH = 512
#: The authors' Cutout: 2 holes of 128 px on 224 px inputs (``train_model.py`` lines 33-35, 66-67,
#: 74-75; checkpoints ``*_cutout2_128_*``), i.e. a side of 128 / 224 of the image's.
CUTOUT_HOLES, CUTOUT_FRACTION = 2, 128 / 224


# --------------------------------------------------------------------------- the mask set

def _axis(n: int, p: int, k: int | None, stride: int | None) -> tuple[int, int, tuple[int, ...]]:
    """Stride s, mask side m and mask origins along one axis of length n for patch side p
    (``gen_mask_set`` lines 26-40)."""
    if p > n:
        raise ValueError(f"patch side {p} is larger than the image side {n}")
    if stride is None:
        if k is None or int(k) < 1:
            raise ValueError(f"num_masks must be a positive int, got {k!r}")
        stride = math.ceil((n - p + 1) / int(k))
    if int(stride) < 1:
        raise ValueError(f"mask stride must be a positive int, got {stride!r}")
    s = int(stride)
    m = min(p + s - 1, n)
    origins = list(range(0, n - m + 1, s))
    if (n - m) % s:
        origins.append(n - m)
    return s, m, tuple(origins)


@dataclass(frozen=True)
class MaskSet:
    """An R-covering mask set 𝓜 for ``patch`` (h, w) on ``image_size`` (H, W): masks of
    ``size`` (m_h, m_w) at origins ``rows`` × ``cols`` (row-major), ``stride`` (s_h, s_w)."""

    image_size: tuple
    patch: tuple
    stride: tuple
    size: tuple
    rows: tuple
    cols: tuple

    def __len__(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def origins(self) -> list[tuple[int, int]]:
        return [(r, c) for r in self.rows for c in self.cols]

    def hide(self, device=None) -> torch.Tensor:
        """(|𝓜|, H, W) bool, True where a mask hides the pixel."""
        H, W = self.image_size
        mh, mw = self.size
        rows = torch.arange(H, device=device)
        cols = torch.arange(W, device=device)
        r0 = torch.tensor(self.rows, device=device)
        c0 = torch.tensor(self.cols, device=device)
        in_r = (rows[None] >= r0[:, None]) & (rows[None] < r0[:, None] + mh)      # (R, H)
        in_c = (cols[None] >= c0[:, None]) & (cols[None] < c0[:, None] + mw)      # (C, W)
        return (in_r[:, None, :, None] & in_c[None, :, None, :]).reshape(-1, H, W)

    def without(self, index: int) -> "BrokenMaskSet":
        """This set less mask ``index``: no longer R-covering (for tests of the checks)."""
        return BrokenMaskSet(self, index)


class BrokenMaskSet:
    """A :class:`MaskSet` with one mask removed (tests only: :func:`check_covering` rejects it)."""

    def __init__(self, base: MaskSet, index: int):
        self.base, self.index = base, int(index)
        self.image_size, self.patch = base.image_size, base.patch

    def __len__(self) -> int:
        return len(self.base) - 1

    def hide(self, device=None) -> torch.Tensor:
        h = self.base.hide(device)
        return torch.cat([h[:self.index], h[self.index + 1:]])


def mask_set(patch, image_size, num_masks: int | None = NUM_MASKS,
             stride=None) -> MaskSet:
    """The R-covering mask set of ``gen_mask_set`` (``utils/defense.py`` lines 16-47) for an
    h × w ``patch`` on an H × W image: k = ``num_masks`` masks per axis, or the given ``stride``
    (int or (s_h, s_w)), which wins. Checked to cover every patch position."""
    (h, w), (H, W) = _pair(patch, "patch"), _pair(image_size, "image_size")
    sh, sw = (None, None) if stride is None else _pair(stride, "stride")
    s_h, m_h, rows = _axis(H, h, num_masks, sh)
    s_w, m_w, cols = _axis(W, w, num_masks, sw)
    ms = MaskSet((H, W), (h, w), (s_h, s_w), (m_h, m_w), rows, cols)
    check_covering(ms)
    return ms


def covered(hide: torch.Tensor, patch) -> torch.Tensor:
    """(H − h + 1, W − w + 1) bool: whether some mask of ``hide`` (M, H, W) hides the whole
    h × w patch with that top-left pixel. Counted from the masks' pixels alone (a box sum per
    mask), independent of how the set was built."""
    h, w = _pair(patch, "patch")
    hidden = F.avg_pool2d(hide[:, None].double(), (h, w), stride=1) * (h * w)   # (M, 1, ., .)
    return (hidden[:, 0].round() == h * w).any(0)


def check_covering(ms) -> None:
    """Raise ValueError unless every patch position of ``ms.patch`` lies inside one of its masks:
    the premise of Theorem 1, so no certificate is issued from a set that misses one."""
    ok = covered(ms.hide(), ms.patch)
    if not bool(ok.all()):
        r, c = (~ok).nonzero()[0].tolist()
        raise ValueError(f"mask set does not cover the {ms.patch[0]}x{ms.patch[1]} patch at "
                         f"row {r}, column {c} ({int((~ok).sum())} positions uncovered)")


# --------------------------------------------------------------------------- masked predictions

def apply_masks(x: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
    """x (N, C, H, W) with the pixels where ``hide`` (N, H, W) is True set to :data:`MASK_VALUE`."""
    return torch.where(hide[:, None], torch.full((), MASK_VALUE, dtype=x.dtype, device=x.device), x)


class _Counter:
    """Forward passes of the base model, one per masked image."""

    def __init__(self, model: nn.Module, amp, chunk: int):
        self.model, self.amp, self.chunk, self.passes = model, amp, int(chunk), 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """argmax labels of the model on x (N, C, H, W), at most ``chunk`` images a pass."""
        out = []
        for i in range(0, len(x), self.chunk):
            xb = x[i:i + self.chunk]
            with autocast(x.device, self.amp):
                out.append(self.model(xb).float().argmax(1))
            self.passes += len(xb)
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=x.device)


def one_mask_predictions(predict, x: torch.Tensor, hide: torch.Tensor) -> torch.Tensor:
    """(B, M) labels F(x_b ⊙ r_m) of the first round."""
    B, M = len(x), len(hide)
    out = torch.empty(B, M, dtype=torch.long, device=x.device)
    step = max(1, predict.chunk // max(1, M))                      # images per pass
    for b0 in range(0, B, step):
        xb = x[b0:b0 + step]
        n = len(xb)
        imgs = apply_masks(xb.repeat_interleave(M, 0), hide.repeat(n, 1, 1))
        out[b0:b0 + n] = predict(imgs).view(n, M)
    return out


def rows_agree(predict, x: torch.Tensor, image: torch.Tensor, base: torch.Tensor | None,
               partners: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(R,) bool: for each row ρ, F(x[image[ρ]] masked by base[ρ] ∪ partners[k]) = target[ρ]
    for every k. Rows are evaluated a chunk of partners at a time and dropped at their first
    disagreement. ``base`` (R, H, W) or None; ``partners`` (K, H, W)."""
    R, K = len(image), len(partners)
    ok = torch.ones(R, dtype=torch.bool, device=x.device)
    alive = torch.arange(R, device=x.device)
    k0 = 0
    while k0 < K and len(alive):
        step = max(1, predict.chunk // len(alive))
        part = partners[k0:k0 + step]                               # (s, H, W)
        n, s = len(alive), len(part)
        hide = part[None].expand(n, -1, -1, -1)
        if base is not None:
            hide = hide | base[alive][:, None]
        imgs = apply_masks(x[image[alive]].repeat_interleave(s, 0), hide.reshape(n * s, *hide.shape[2:]))
        good = (predict(imgs).view(n, s) == target[alive][:, None]).all(1)
        ok[alive[~good]] = False
        alive = alive[good]
        k0 += s
    return ok


def _majority(one: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The most frequent one-mask label of each image, ties to the smaller class index."""
    counts = F.one_hot(one, num_classes).sum(1)                     # (B, C)
    key = counts * num_classes + (num_classes - 1 - torch.arange(num_classes, device=one.device))
    return key.argmax(1)


def double_masking_from_map(pred_map: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """Algorithm 1 on precomputed two-mask labels ``pred_map`` (B, M, M), entry (i, j) =
    F(x ⊙ r_i ⊙ r_j), diagonal = one-mask labels (``double_masking_precomputed``, lines 115-149).
    The reference for :func:`double_masking`."""
    B, M, _ = pred_map.shape
    one = pred_map.diagonal(dim1=1, dim2=2)                         # (B, M)
    C = num_classes or int(pred_map.max()) + 1
    maj = _majority(one, C)
    out = maj.clone()
    agree = (one == one[:, :1]).all(1)
    out[agree] = one[agree, 0]
    for b in (~agree).nonzero().flatten().tolist():
        for i in range(M):
            if one[b, i] != maj[b] and bool((pred_map[b, i] == one[b, i]).all()):
                out[b] = one[b, i]
                break
    return out


def certified_from_map(pred_map: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Theorem 1 on precomputed two-mask labels: every entry equals the label
    (``certify_precomputed``, lines 151-154)."""
    return (pred_map == labels.to(pred_map.device)[:, None, None]).flatten(1).all(1)


@dataclass
class DoubleMasking:
    """Per-image results of double masking for one mask set."""

    prediction: torch.Tensor   # (B,) Algorithm 1's label
    one_mask: torch.Tensor     # (B, M) first-round labels
    certified: torch.Tensor    # (B,) bool: every two-mask label is the image's label
    passes: int                # forward passes spent on the batch

    @property
    def case(self) -> torch.Tensor:
        """1: first round unanimous; 2/3: disagreement (second round ran)."""
        agree = (self.one_mask == self.one_mask[:, :1]).all(1)
        return torch.where(agree, 1, 2)


@torch.no_grad()
def double_masking(model: nn.Module, x: torch.Tensor, ms, labels: torch.Tensor | None = None, *,
                   amp: bool | None = None, chunk: int | None = None, num_classes: int | None = None,
                   check: bool = True) -> DoubleMasking:
    """Algorithm 1's prediction for images x (B, C, H, W) in [0, 1] with mask set ``ms``, and
    with ``labels`` Theorem 1's certificate (else ``certified`` is all False). The base ``model``
    runs in eval mode (restored afterwards), ``chunk`` masked images a pass (None:
    :func:`~bagcert_lib.runtime.forward_batch`'s choice for the device, 512 on a GPU). ``check``:
    refuse a mask set that is not R-covering (:func:`check_covering`)."""
    if x.dim() != 4 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (B, C, H, W), got {tuple(x.shape)}")
    if tuple(x.shape[-2:]) != tuple(ms.image_size):
        raise ValueError(f"mask set is for {ms.image_size}, images are {tuple(x.shape[-2:])}")
    if check:
        check_covering(ms)
    was_training = model.training
    model.eval()
    predict = _Counter(model, amp, forward_batch(x, chunk, accelerator=GPU_BATCH))
    try:
        hide = ms.hide(x.device)
        M = len(hide)
        one = one_mask_predictions(predict, x, hide)
        C = num_classes or getattr(model, "num_classes", None) or int(one.max()) + 1
        agree = (one == one[:, :1]).all(1)
        pred = _majority(one, C)
        pred[agree] = one[agree, 0]
        # second round: each disagreer mask i against every mask j, first survivor (in mask order) wins
        b, i = ((one != pred[:, None]) & ~agree[:, None]).nonzero(as_tuple=True)
        if len(b):
            ok = rows_agree(predict, x, b, hide[i], hide, one[b, i])
            winner = torch.full((len(x),), M, dtype=torch.long, device=x.device)
            winner.scatter_reduce_(0, b[ok], i[ok], "amin")
            won = winner < M
            pred[won] = one[won.nonzero().flatten(), winner[won]]
        certified = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        if labels is not None:
            labels = labels.to(x.device).long()
            cand = (agree & (one[:, 0] == labels)).nonzero().flatten()
            if len(cand):
                ii, jj = torch.triu_indices(M, M, 1, device=x.device)
                certified[cand] = rows_agree(predict, x, cand, None, hide[ii] | hide[jj], labels[cand])
    finally:
        model.train(was_training)
    return DoubleMasking(prediction=pred, one_mask=one, certified=certified, passes=predict.passes)


def certify_model(model: nn.Module, batches: Iterable, patches: Sequence, *,
                  num_masks: int | None = NUM_MASKS, stride=None, device=None,
                  amp: bool | None = None, progress: bool = True, desc: str = "certify PC",
                  chunk: int | None = None) -> pd.DataFrame:
    """Clean and certified accuracy of double masking over a data loader, one row per patch shape
    (condition ``PC``), with the columns of :func:`bagcert_lib.certifier.certify_model` and:
    ``masks`` |𝓜|, ``mask_h``/``mask_w``, ``stride_h``/``stride_w``, ``passes`` (masked forward
    passes spent), ``undefended_accuracy`` (the base model on the clean images). ``certify_s``
    is the shape's time, ``forward_s`` the undefended forward pass (shared)."""
    from tqdm import tqdm

    patches = [_pair(p, "patch") for p in patches]
    if not patches:
        raise ValueError("give at least one patch shape")
    device = device or next(model.parameters()).device
    stats = {p: dict(certified=0, correct=0, passes=0, seconds=0.0) for p in patches}
    sets: dict = {}
    n = undefended = 0
    t_forward = 0.0
    was_training = model.training
    model.eval()
    # the bar counts images; one batch takes minutes on a CPU, so it also names the shape under way
    bar = tqdm(desc=desc, unit="img", disable=not progress, leave=False)
    try:
        for x, y in batches:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            size = tuple(x.shape[-2:])
            if size not in sets:          # validates every shape before any forward pass
                sets[size] = {p: mask_set(p, size, num_masks, stride) for p in patches}
            _sync(device)
            t0 = time.perf_counter()
            with torch.no_grad(), autocast(x.device, amp):
                undefended += int((model(x).float().argmax(1) == y).sum())
            _sync(device)
            t_forward += time.perf_counter() - t0
            for i, p in enumerate(patches):
                bar.set_postfix_str(f"shape {i + 1}/{len(patches)} ({patch_label(p)}) of images "
                                    f"{n + 1}-{n + len(y)}")
                t1 = time.perf_counter()
                res = double_masking(model, x, sets[size][p], y, amp=amp, chunk=chunk, check=False)
                st = stats[p]
                st["certified"] += int(res.certified.sum())
                st["correct"] += int((res.prediction == y).sum())
                st["passes"] += res.passes
                _sync(device)
                st["seconds"] += time.perf_counter() - t1
            n += len(y)
            bar.update(len(y))
    finally:
        bar.close()
        model.train(was_training)
    if n == 0:
        raise ValueError("the data loader yielded no samples")
    rows = []
    for p in patches:
        ms, st = next(iter(sets.values()))[p], stats[p]
        rows.append({"patch": patch_label(p), "patch_h": p[0], "patch_w": p[1], "condition": "PC",
                     "n": n, "clean_accuracy": st["correct"] / n,
                     "certified_accuracy": st["certified"] / n, "forward_s": t_forward,
                     "certify_s": st["seconds"], "masks": len(ms), "mask_h": ms.size[0],
                     "mask_w": ms.size[1], "stride_h": ms.stride[0], "stride_w": ms.stride[1],
                     "passes": st["passes"], "undefended_accuracy": undefended / n})
    df = pd.DataFrame(rows)
    df.attrs.update(forward_s=t_forward, certify_s=sum(s["seconds"] for s in stats.values()), n=n,
                    num_masks=num_masks)
    return df


# --------------------------------------------------------------------------- training

def cutout_size(image_size, size: int | None = None) -> int:
    """The Cutout hole side: ``size``, else 128 / 224 of the shorter image side (the authors'
    128 px on 224 px; 18 px on CIFAR-10's 32)."""
    if size is not None:
        if int(size) < 1:
            raise ValueError(f"cutout size must be a positive int, got {size!r}")
        return int(size)
    return max(1, round(CUTOUT_FRACTION * min(_pair(image_size, "image_size"))))


def random_cutout(x: torch.Tensor, holes: int = CUTOUT_HOLES, size: int | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Cutout (DeVries & Taylor, 2017) as the authors train PatchCleanser's models
    (``utils/cutout.py`` lines 30-45): per image and hole, a centre (y, x) uniform over the
    pixels, rows y − ⌊L/2⌋ … y + ⌊L/2⌋ − 1 and columns likewise (clipped at the border) set to
    :data:`MASK_VALUE`. Draws from ``generator`` (default: the global RNG, as the trainer seeds)."""
    if int(holes) < 0:
        raise ValueError(f"cutout holes must be >= 0, got {holes!r}")
    B, _, H, W = x.shape
    L = cutout_size((H, W), size)
    if holes == 0:
        return x
    gen_device = generator.device if generator is not None else x.device
    cy = torch.randint(H, (B, int(holes)), generator=generator, device=gen_device).to(x.device)
    cx = torch.randint(W, (B, int(holes)), generator=generator, device=gen_device).to(x.device)
    r = torch.arange(H, device=x.device)
    c = torch.arange(W, device=x.device)
    in_r = (r >= cy[..., None] - L // 2) & (r < cy[..., None] + L // 2)          # (B, n, H)
    in_c = (c >= cx[..., None] - L // 2) & (c < cx[..., None] + L // 2)          # (B, n, W)
    hide = (in_r[..., :, None] & in_c[..., None, :]).any(1)                       # (B, H, W)
    return apply_masks(x, hide)


# --------------------------------------------------------------------------- attack

def patch_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ms, row, col, *,
                 steps: int = 50, step_size: float = 0.05, amp: bool | None = False,
                 pairs: bool = True, generator: torch.Generator | None = None) -> dict:
    """PGD (:func:`~bagcert_lib.attack.pgd_patch`) on the h × w patch at (row, col) of each
    image: the patch pixels p ∈ [0, 1] maximise the cross-entropy of the label over all images
    x ⊙ r_i ⊙ r_j (r_i = r_j included), i.e. against both rounds of double masking
    (``pairs=False``: the first round's x ⊙ r_i only, (|𝓜| + 1) / 2 times cheaper). Every iterate's
    double-masking prediction is checked; an image is broken as soon as one differs from its
    label, and that iterate is kept. Returns ``broken`` (B,) bool and the ``images``."""
    h, w = ms.patch
    B = len(x)
    row = torch.as_tensor(row, device=x.device).expand(B)
    col = torch.as_tensor(col, device=x.device).expand(B)
    mask = patch_mask(x.shape, row, col, (h, w), x.device)
    hide = ms.hide(x.device)
    if pairs:
        ii, jj = torch.triu_indices(len(hide), len(hide), 0, device=x.device)
        hide = hide[ii] | hide[jj]                                  # (P, H, W)
    P = len(hide)
    y = y.to(x.device).long()

    def evaluate(a, live):
        wrong = double_masking(model, a.detach(), ms, amp=amp, check=False).prediction != y[live]
        imgs = apply_masks(a.repeat_interleave(P, 0), hide.repeat(len(a), 1, 1))
        with autocast(x.device, amp):
            logits = model(imgs).float()
        loss = F.cross_entropy(logits, y[live].repeat_interleave(P), reduction="none")
        return wrong, loss.view(len(a), P).sum(1)

    images, broken = pgd_patch(model, x, mask, evaluate, steps=steps, step_size=step_size,
                               generator=generator)
    return {"broken": broken, "images": images}
