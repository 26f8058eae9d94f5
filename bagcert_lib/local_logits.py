"""What Clipped BagNet and PatchGuard's Mask-BN share: per-region class logits z ∈ ℝ^{C×H×W}
from the region scorer (App. A.1, the classifier's 1×1 convolution without a head), the window
of outputs one patch can reach, window sums, and the patch attack on a defense's margin.

A patch of h × w pixels at l changes only the outputs R(l) (``certifier.affected_range``); every
R(l) lies inside one *window* of k_h × k_w outputs, k = max_l #rows (resp. columns) of R(l), which
at stride 1 is min(h + RF − 1, H_out): PatchGuard's ⌈(p + RF − 1) / stride⌉ (Xiang et al., 2021,
§4.2; ``mask_bn.py`` line 107 of inspire-group/PatchGuard).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .attack import patch_mask, pgd_patch
from .certifier import _pair, affected_range
from .runtime import autocast


@torch.no_grad()
def local_logits(model, x: torch.Tensor, amp: bool | None = None) -> torch.Tensor:
    """Eval-mode region logits z = f_θ(x) as float32 (B, C, H_out, W_out)."""
    was_training = model.training
    model.eval()
    try:
        with autocast(x.device, amp):
            z = model(x)
        return z.float()
    finally:
        model.train(was_training)


def window_shape(patch, rf, stride, image_size, out_size) -> tuple[int, int]:
    """(k_h, k_w): the most output rows and columns any R(l) of an h × w patch spans."""
    (ph, pw), (H, W), (Ho, Wo) = _pair(patch, "patch"), _pair(image_size, "image_size"), out_size
    rf, stride = _pair(rf, "rf"), _pair(stride, "stride")
    if ph > H or pw > W:
        raise ValueError(f"patch {ph}x{pw} is larger than the image {H}x{W}")
    kh = int((lambda a, b: (b - a + 1).max())(*affected_range(H, Ho, ph, rf[0], stride[0])))
    kw = int((lambda a, b: (b - a + 1).max())(*affected_range(W, Wo, pw, rf[1], stride[1])))
    return max(kh, 1), max(kw, 1)


def summed_area(u: torch.Tensor) -> torch.Tensor:
    """P[..., i, j] = Σ_{<i, <j} u in float64, with a zero first row and column."""
    P = u.to(torch.float64).cumsum(-1).cumsum(-2)
    return torch.nn.functional.pad(P, (1, 0, 1, 0))


def window_sums(u: torch.Tensor, window) -> torch.Tensor:
    """Σ of u over every k_h × k_w window inside the map: (..., H − k_h + 1, W − k_w + 1)."""
    kh, kw = window
    P = summed_area(u)
    return P[..., kh:, kw:] - P[..., :-kh, kw:] - P[..., kh:, :-kw] + P[..., :-kh, :-kw]


def patch_origin(win_row, win_col, window, patch, rf, stride, image_size):
    """The top-left pixel of a patch whose R(l) lies in the window at (win_row, win_col) and
    reaches as much of it as it can: the window's first output row times the stride plus RF's
    radius, kept inside the image."""
    (ph, pw), (H, W) = _pair(patch, "patch"), _pair(image_size, "image_size")
    rf, stride = _pair(rf, "rf"), _pair(stride, "stride")
    row = (win_row * stride[0] + (rf[0] - 1) // 2).clamp(0, H - ph)
    col = (win_col * stride[1] + (rf[1] - 1) // 2).clamp(0, W - pw)
    return row, col


@dataclass
class LocalCertificate:
    """Per-sample results of a local-logit defense for one patch shape, each (B,)."""

    correct: torch.Tensor            # the defense's prediction on the clean image is the label
    certified: torch.Tensor          # the certificate holds (implies correct)
    target: torch.Tensor             # the class of the weakest bound (attack target c*)
    row: torch.Tensor                # top-left pixel of the weakest patch position l*
    col: torch.Tensor

    @property
    def certified_global(self) -> torch.Tensor:
        """These defenses have one condition: the same as ``certified``."""
        return self.certified


def pgd_at_weakest(model, x, y, cert: LocalCertificate, patch, margin, predict, *, steps=100,
                   step_size=0.025, amp=None, generator=None):
    """App. A.2's PGD (:func:`~bagcert_lib.attack.pgd_patch`) on the patch at each sample's l*,
    for a defense given by ``margin(z, y, target)`` (evidence of y minus that of the target,
    differentiable, (B,)) and ``predict(z)`` (its prediction, (B,)). Returns (images, broken)."""
    y = y.to(x.device).long()
    mask = patch_mask(x.shape, cert.row, cert.col, _pair(patch, "patch"), x.device)

    def evaluate(a, live):
        with autocast(x.device, amp):
            z = model(a)
        z = z.float()
        return predict(z.detach()) != y[live], -margin(z, y[live], cert.target[live])

    return pgd_patch(model, x, mask, evaluate, steps=steps, step_size=step_size,
                     generator=generator)
