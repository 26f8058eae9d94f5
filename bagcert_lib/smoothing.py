"""Derandomized Smoothing (Levine & Feizi, 2020), the certified patch defence BagCert compares to.

A base classifier sees *ablated* images: all but a block of s × s pixels (block smoothing) or a
band of b columns (column smoothing) is removed, both wrapping around the image border. The
smoothed classifier runs the base classifier on every ablation, lets each ablation vote for every
class whose softmax is ≥ θ, and predicts the class with the most votes n(c) (ties go to the
smaller class index). A patch meets at most Δ ablations, so it can remove at most Δ votes from the
predicted class and add at most Δ to any other: the prediction c is certified if and only if, for
every c′ ≠ c, n(c) − n(c′) > 2Δ, or n(c) − n(c′) = 2Δ and c < c′.

Ablated inputs have 6 channels, (x · m, (1 − x) · m) with x ∈ [0, 1] and m the keep mask, so an
ablated pixel (all zeros) can be told apart from any visible one.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .attack import AttackResult, patch_mask, pgd_patch
from .certifier import _pair, _sync, patch_label
from .runtime import autocast

KINDS = ("block", "column")


# --------------------------------------------------------------------------- ablations

def _check(kind: str, size: int) -> int:
    if kind not in KINDS:
        raise ValueError(f"unknown ablation kind {kind!r}; choose one of {KINDS}")
    if int(size) != size or size < 1:
        raise ValueError(f"ablation size must be a positive int, got {size!r}")
    return int(size)


def num_ablations(kind: str, image_size) -> int:
    """The number of ablations A of Levine & Feizi (2020): H · W (block) or W (column)."""
    _check(kind, 1)
    H, W = _pair(image_size, "image_size")
    return H * W if kind == "block" else W


def _band(start: torch.Tensor, size: int, n: int) -> torch.Tensor:
    """(len(start), n) bool: positions start, ..., start + size - 1 modulo n (wrap-around)."""
    pos = torch.arange(n, device=start.device)
    return (pos[None, :] - start[:, None]) % n < size


def _masks(kind: str, size: int, image_size, index: torch.Tensor) -> torch.Tensor:
    """Keep masks (len(index), H, W) of the ablations with the given indices. Block ablation
    a = i * W + j keeps rows i.. and columns j.. (mod H, W); column ablation j keeps columns j.."""
    H, W = image_size
    if kind == "block":
        rows = _band(torch.div(index, W, rounding_mode="floor"), size, H)
        cols = _band(index % W, size, W)
    else:
        rows = torch.ones(len(index), H, dtype=torch.bool, device=index.device)
        cols = _band(index, size, W)
    return rows[:, :, None] & cols[:, None, :]


def ablation_masks(kind: str, size: int, image_size, device=None) -> torch.Tensor:
    """All A keep masks of Levine & Feizi (2020) as a bool tensor (A, H, W), True = visible.

    ``kind="block"``: A = H · W, mask i · W + j keeps rows i … i+s−1 and columns j … j+s−1 (mod
    H and W); ``kind="column"``: A = W, mask j keeps every row and columns j … j+b−1 (mod W).
    """
    size = _check(kind, size)
    image_size = _pair(image_size, "image_size")
    index = torch.arange(num_ablations(kind, image_size), device=device)
    return _masks(kind, size, image_size, index)


def encode(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Levine & Feizi (2020)'s 6-channel encoding (x · m, (1 − x) · m), concatenated on channels;
    ``keep`` is a bool mask broadcastable to x's (B, 1, H, W)."""
    m = keep.to(x.dtype)
    return torch.cat([x * m, (1 - x) * m], dim=1)


def ablate(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Every image of x (B, 3, H, W) under every mask of ``masks`` (A, H, W): (B · A, 6, H, W),
    image-major (row b · A + a is image b under mask a)."""
    if x.dim() != 4 or masks.dim() != 3 or masks.shape[1:] != x.shape[2:]:
        raise ValueError(f"need x (B, C, H, W) and masks (A, H, W) of the same H, W, "
                         f"got {tuple(x.shape)} and {tuple(masks.shape)}")
    B, C, H, W = x.shape
    A = masks.shape[0]
    m = masks.to(device=x.device, dtype=x.dtype)[None, :, None]          # (1, A, 1, H, W)
    xb = x[:, None]                                                       # (B, 1, C, H, W)
    out = torch.cat([xb * m, (1 - xb) * m], dim=2)                        # (B, A, 2C, H, W)
    return out.reshape(B * A, 2 * C, H, W)


def random_ablation(x: torch.Tensor, kind: str, size: int,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Training input of Levine & Feizi (2020): every image under one uniformly random
    ablation (B, 6, H, W); positions are drawn with ``generator`` (on its own device)."""
    size = _check(kind, size)
    image_size = tuple(x.shape[-2:])
    A = num_ablations(kind, image_size)
    gen_device = generator.device if generator is not None else x.device
    index = torch.randint(A, (x.shape[0],), generator=generator, device=gen_device)
    keep = _masks(kind, size, image_size, index.to(x.device))
    return encode(x, keep[:, None])


def affected_ablations(kind: str, size: int, patch, image_size) -> int:
    """Δ: the most ablations an h × w patch can meet over all its positions (Levine & Feizi,
    2020), with the wrap-around bands capped at the image: min(h+s−1, H) · min(w+s−1, W) for
    blocks, min(w+b−1, W) for columns."""
    size = _check(kind, size)
    h, w = _pair(patch, "patch")
    H, W = _pair(image_size, "image_size")
    if h > H or w > W:
        raise ValueError(f"patch {w}x{h} (width x height) is larger than the image {W}x{H}")
    cols = min(w + size - 1, W)
    return min(h + size - 1, H) * cols if kind == "block" else cols


# --------------------------------------------------------------------------- prediction

def _check_batch(x: torch.Tensor, chunk: int | None) -> int:
    """The images per forward pass (:func:`~bagcert_lib.runtime.forward_batch`), after checking
    ``x`` and ``chunk``."""
    from .runtime import forward_batch

    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk!r}")
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch (B, 3, H, W), got {tuple(x.shape)}")
    return forward_batch(x, chunk)


def _softmax_chunks(model: nn.Module, x: torch.Tensor, kind: str, size: int, amp, chunk: int):
    """Yield (b0, index, p): the float32 softmax p (nb, len(index), C) of the base classifier on
    images x[b0:b0+chunk] under the ablations ``index``, at most ``chunk`` inputs a forward pass.
    The model is in eval mode while the generator runs (its mode restored afterwards)."""
    from .runtime import autocast

    image_size = tuple(x.shape[-2:])
    A = num_ablations(kind, image_size)
    was_training = model.training
    model.eval()
    try:
        for b0 in range(0, x.shape[0], chunk):
            xb = x[b0:b0 + chunk]
            step = max(1, chunk // xb.shape[0])           # ablations per forward pass
            for a0 in range(0, A, step):
                index = torch.arange(a0, min(a0 + step, A), device=x.device)
                inputs = ablate(xb, _masks(kind, size, image_size, index))
                with autocast(x.device, amp):
                    logits = model(inputs)
                yield b0, index, logits.float().softmax(1).view(xb.shape[0], len(index), -1)
    finally:
        model.train(was_training)


@torch.no_grad()
def ablation_softmax(model: nn.Module, x: torch.Tensor, kind: str, size: int, *,
                     amp: bool | None = None, chunk: int | None = None) -> torch.Tensor:
    """The base classifier's softmax on every ablation of every image, float32 (B, A, C):
    ``p[b, a]`` is image b under ablation a (:func:`ablation_masks`' order). The votes of
    :func:`vote_counts` are (p ≥ θ) summed over a, from the very same forward passes."""
    size = _check(kind, size)
    chunk = _check_batch(x, chunk)
    out = None
    for b0, index, p in _softmax_chunks(model, x, kind, size, amp, chunk):
        if out is None:
            out = torch.empty(x.shape[0], num_ablations(kind, tuple(x.shape[-2:])), p.shape[-1],
                              device=x.device)
        out[b0:b0 + p.shape[0], index] = p
    return out


@torch.no_grad()
def vote_counts(model: nn.Module, x: torch.Tensor, kind: str, size: int, theta: float, *,
                amp: bool | None = None, chunk: int | None = None) -> torch.Tensor:
    """Votes n (B, C) int64 of Levine & Feizi (2020): n[b, c] is the number of ablations of image
    b whose softmax for c is ≥ θ. The base ``model`` (eval mode, restored afterwards) sees at
    most ``chunk`` ablated images per forward pass (None: :func:`~bagcert_lib.runtime.forward_batch`'s
    choice for the device); the softmax is taken in float32."""
    size = _check(kind, size)
    if not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must lie in [0, 1], got {theta!r}")
    chunk = _check_batch(x, chunk)
    counts = None
    for b0, _, p in _softmax_chunks(model, x, kind, size, amp, chunk):
        if counts is None:
            counts = torch.zeros(x.shape[0], p.shape[-1], dtype=torch.long, device=x.device)
        counts[b0:b0 + p.shape[0]] += (p >= theta).sum(1)
    return counts


def predict(counts: torch.Tensor) -> torch.Tensor:
    """Smoothed prediction: argmax of the votes, ties broken toward the smaller class index."""
    C = counts.shape[1]
    key = counts.long() * C + (C - 1 - torch.arange(C, device=counts.device))
    return key.argmax(1)


@dataclass
class SmoothedPrediction:
    """Per-sample results of the smoothed classifier (Levine & Feizi, 2020)."""

    prediction: torch.Tensor   # (B,) long
    counts: torch.Tensor       # (B, C) votes
    correct: torch.Tensor      # (B,) bool: prediction == label
    certified: torch.Tensor    # (B,) bool: certified and correct
    delta: int                 # Δ, the most ablations one patch can meet

    def summary(self) -> dict:
        """n, and the clean and certified accuracies."""
        n = len(self.correct)
        return {"n": n, "clean_accuracy": self.correct.float().mean().item(),
                "certified_accuracy": self.certified.float().mean().item()}


def certify_counts(counts: torch.Tensor, labels: torch.Tensor, delta: int) -> SmoothedPrediction:
    """Levine & Feizi (2020)'s certificate: the prediction c holds against any change of Δ
    ablations if and only if, for every c′ ≠ c, n(c) − n(c′) > 2Δ, or = 2Δ with c < c′."""
    if counts.dim() != 2:
        raise ValueError(f"counts must be (B, C), got shape {tuple(counts.shape)}")
    if delta < 0:
        raise ValueError(f"delta must be >= 0, got {delta!r}")
    B, C = counts.shape
    labels = labels.to(counts.device).long()
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},), got {tuple(labels.shape)}")
    counts = counts.long()
    pred = predict(counts)
    gap = counts.gather(1, pred[:, None]) - counts                   # (B, C)
    classes = torch.arange(C, device=counts.device)
    beats = (gap > 2 * delta) | ((gap == 2 * delta) & (pred[:, None] < classes))
    beats |= classes == pred[:, None]                                  # no need to beat itself
    correct = pred == labels
    return SmoothedPrediction(prediction=pred, counts=counts, correct=correct,
                              certified=correct & beats.all(1), delta=int(delta))


def certify_model(model: nn.Module, batches: Iterable, patches: Sequence, *, kind: str,
                  size: int, theta: float, device=None, amp: bool | None = None,
                  progress: bool = True, desc: str = "certify DS",
                  chunk: int | None = None) -> pd.DataFrame:
    """Certified accuracy of Derandomized Smoothing (Levine & Feizi, 2020) over a data loader.

    ``batches`` yields (images in [0, 1], labels). The votes are computed once per batch and
    certified for every patch shape (only Δ differs). Returns one row per patch shape with the
    columns of :func:`bagcert_lib.certifier.certify_model` (condition "DS"): ``forward_s`` is the
    time in :func:`vote_counts`, ``certify_s`` the time in :func:`certify_counts` for that shape.
    """
    from tqdm import tqdm

    size = _check(kind, size)
    if not 0.0 <= theta <= 1.0:
        raise ValueError(f"theta must lie in [0, 1], got {theta!r}")
    patches = [_pair(p, "patch") for p in patches]
    if not patches:
        raise ValueError("give at least one patch shape")
    device = device or next(model.parameters()).device
    certified = {p: 0 for p in patches}
    times = {p: 0.0 for p in patches}
    deltas: dict = {}
    n = correct = 0
    t_forward = 0.0
    for x, y in tqdm(batches, desc=desc, disable=not progress, leave=False):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        image_size = tuple(x.shape[-2:])
        if image_size not in deltas:    # validates the patch shapes before any forward pass
            deltas[image_size] = {p: affected_ablations(kind, size, p, image_size)
                                  for p in patches}
        _sync(device)
        t0 = time.perf_counter()
        counts = vote_counts(model, x, kind, size, theta, amp=amp, chunk=chunk)
        _sync(device)
        t_forward += time.perf_counter() - t0
        for i, p in enumerate(patches):
            t1 = time.perf_counter()
            res = certify_counts(counts, y, deltas[image_size][p])
            certified[p] += int(res.certified.sum())
            if i == 0:
                correct += int(res.correct.sum())
            _sync(device)
            times[p] += time.perf_counter() - t1
        n += len(y)
    if n == 0:
        raise ValueError("the data loader yielded no samples")
    rows = [{"patch": patch_label(p), "patch_h": p[0], "patch_w": p[1], "condition": "DS",
             "n": n, "clean_accuracy": correct / n, "certified_accuracy": certified[p] / n,
             "forward_s": t_forward, "certify_s": times[p]} for p in patches]
    df = pd.DataFrame(rows)
    df.attrs.update(forward_s=t_forward, certify_s=sum(times.values()), n=n, kind=kind,
                    size=size, theta=theta)
    return df


# --------------------------------------------------------------------------- attack

def _at(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(B, A): t[b, a, c[b]] of t (B, A, C)."""
    return t.gather(2, c[:, None, None].expand(-1, t.shape[1], 1))[..., 0]


def patch_ablations(kind: str, size: int, patch, image_size, device=None) -> torch.Tensor:
    """(P, A) bool: which ablations see (keep a pixel of) the h × w patch at each of its
    P = (H − h + 1)(W − w + 1) positions, row-major. Read off the keep masks themselves, so it
    checks :func:`affected_ablations`' Δ, the most of any row, rather than using it."""
    h, w = _pair(patch, "patch")
    keep = ablation_masks(kind, size, image_size, device)                 # (A, H, W)
    seen = F.max_pool2d(keep[:, None].float(), (h, w), stride=1)[:, 0]    # (A, H-h+1, W-w+1)
    return seen.flatten(1).T > 0


@dataclass
class SmoothingAttack(AttackResult):
    """What :func:`attack` found, per image: :class:`~bagcert_lib.attack.AttackResult`'s fields
    (``clean_correct`` / ``adv_correct``: the smoothed prediction on all A ablations of the clean
    / adversarial image; ``certificate``: the clean images' :class:`SmoothedPrediction`), and
    ``stepwise`` (broken by an iterate, counted from the ablations the patch meets),
    ``vote_change`` max_c |n′(c) − n(c)| (0 for an image wrong to begin with, which is not counted
    again), ``delta`` Δ and ``met``, the ablations every patch position meets."""

    stepwise: torch.Tensor
    vote_change: torch.Tensor
    delta: int
    met: int


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, patch=5, *, kind: str, size: int,
           theta: float, steps: int = 50, step_size: float = 0.05, amp: bool | None = None,
           generator=None, chunk: int | None = None) -> SmoothingAttack:
    """PGD (:func:`~bagcert_lib.attack.pgd_patch`) on the smoothed classifier's votes.

    * **Where:** with votes v_a(c) = [p_a(c) ≥ θ] of the clean image and c* the class with the
      most votes after the label y, the patch goes where the ablations it meets hold the most
      votes for y over c*: argmax over positions of Σ_{a meets patch} v_a(y) − v_a(c*) (the first
      such position; for column ablations rows do not matter and the patch is centred).
    * **What:** the patch pixels maximise Σ_{a meets patch} log p_a(c*) − log p_a(y). Only the
      ablations the patch meets see it, so an iterate's votes are those of the others on the
      clean image plus its own on these: each iterate's smoothed prediction is exact, and the
      first wrong one is kept.
    * **Check:** the returned images are counted again on all A ablations (:func:`vote_counts`),
      which decides ``adv_correct`` and gives the vote change, at most Δ if the premise of the
      certificate holds."""
    size = _check(kind, size)
    h, w = _pair(patch, "patch")
    B, _, H, W = x.shape
    y = y.to(x.device).long()
    delta = affected_ablations(kind, size, (h, w), (H, W))
    probs = ablation_softmax(model, x, kind, size, amp=amp, chunk=chunk)        # (B, A, C)
    votes = probs >= theta
    counts = votes.sum(1)
    cert = certify_counts(counts, y, delta)
    C = counts.shape[1]
    target = predict(counts.masked_fill(F.one_hot(y, C).bool(), -1))           # runner-up c*
    gain = _at(votes.float(), y) - _at(votes.float(), target)                   # (B, A)
    sees = patch_ablations(kind, size, (h, w), (H, W), x.device)               # (P, A)
    positions = torch.arange(len(sees), device=x.device).view(H - h + 1, W - w + 1)
    if kind == "column":                                                        # centred rows
        positions = positions[(H - h) // 2: (H - h) // 2 + 1]
    positions = positions.flatten()
    best = positions[(gain @ sees[positions].T.float()).argmax(1)]              # (B,)
    row, col = best // (W - w + 1), best % (W - w + 1)
    met = sees.sum(1)
    if int(met.min()) != int(met.max()):
        raise RuntimeError(f"patch positions meet {int(met.min())} to {int(met.max())} ablations; "
                           "the bands wrap, so every position should meet as many")
    met = int(met.max())
    index = sees[best].nonzero()[:, 1].view(B, met)                             # (B, met)
    masks = ablation_masks(kind, size, (H, W), x.device)
    others = counts - votes.gather(1, index[..., None].expand(-1, -1, C)).sum(1)

    def evaluate(a, live):
        n = len(a)
        keep = masks[index[live]].reshape(n * met, 1, H, W)
        with autocast(a.device, amp):
            logits = model(encode(a.repeat_interleave(met, 0), keep))
        logits = logits.float().view(n, met, C)
        now = others[live] + (logits.detach().softmax(2) >= theta).sum(1)      # as vote_counts
        logp = logits.log_softmax(2)
        objective = (_at(logp, target[live]) - _at(logp, y[live])).sum(1)
        return predict(now) != y[live], objective

    mask = patch_mask(x.shape, row, col, (h, w), x.device)
    images, stepwise = pgd_patch(model, x, mask, evaluate, steps=steps, step_size=step_size,
                                 generator=generator)
    after = counts.clone()                        # an image wrong to begin with stays so
    if bool(cert.correct.any()):
        after[cert.correct] = vote_counts(model, images[cert.correct], kind, size, theta, amp=amp,
                                          chunk=chunk)
    adv_correct = cert.correct & (predict(after) == y)
    return SmoothingAttack(images=images, row=row, col=col, target=target, clean_correct=cert.correct,
                           adv_correct=adv_correct, flipped=cert.correct & ~adv_correct,
                           certificate=cert, stepwise=stepwise, vote_change=(after - counts).abs().amax(1),
                           delta=int(delta), met=met)


# --------------------------------------------------------------------------- base classifier

class BasicBlock(nn.Module):
    """Two 3×3 convolution + BatchNorm layers with an identity shortcut (projected when needed)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet18(nn.Module):
    """ResNet-18 for 32×32 inputs (the pytorch-cifar variant Levine & Feizi (2020) train on
    6-channel ablated CIFAR-10): 3×3 stem with stride 1, no max-pool, four stages of two
    BasicBlocks with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2, global average pool, linear."""

    def __init__(self, num_classes: int = 10, width: int = 64, in_channels: int = 6):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, planes = [], width
        for i, stride in enumerate((1, 2, 2, 2)):
            out = width * 2 ** i
            stages.append(nn.Sequential(BasicBlock(planes, out, stride), BasicBlock(out, out)))
            planes = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of ablated images x (B, 6, H, W)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def resnet18(num_classes: int = 10, width: int = 64, in_channels: int = 6) -> CifarResNet18:
    """The DS base classifier of Levine & Feizi (2020) on CIFAR-10 (6 input channels)."""
    return CifarResNet18(num_classes=num_classes, width=width, in_channels=in_channels)
