"""A heuristic adversarial patch attack (App. A.2): an upper bound on robust accuracy.

1. Choose the patch position and target class that Condition 3.2 finds weakest
   (:meth:`~bagcert_lib.certifier.ScoreMaps.worst_case`)::

       (l*, c*) = argmin over l and c ≠ cₜ of  Σ_{(i,j) ∉ R(l)} Δ(i, j, c) − #R(l)

2. Keep them fixed and run PGD on the patch's pixels p ∈ [0, 1] (100 steps of size 0.025 by
   default), maximising the margin loss L_R of §3.3 (M = 1) restricted to the target c*.

An image counts as broken as soon as any PGD iterate flips g_Σ's prediction; that iterate is
kept. A certified image is never broken (the certificate is a proof); the tests and every
committed run's ``attack.json`` (``certified_broken``: 0) check it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .certifier import Certificate, ScoreMaps, _pair
from .heads import get_head
from .loss import check_margin
from .runtime import autocast, region_scores


@dataclass
class AttackResult:
    """What :func:`patch_attack` found, per image.

    * ``images`` (B, C_in, H, W) in [0, 1]: the adversarial images;
    * ``row``, ``col`` (B,): l*, the top-left pixel of the patch; ``target`` (B,): c*;
    * ``clean_correct``, ``adv_correct`` (B,) bool: correct before and after the attack;
    * ``flipped`` (B,) bool: correct before, wrong after;
    * ``certificate``: the §3.1 :class:`~bagcert_lib.certifier.Certificate` of the clean images.
    """

    images: torch.Tensor
    row: torch.Tensor
    col: torch.Tensor
    target: torch.Tensor
    clean_correct: torch.Tensor
    adv_correct: torch.Tensor
    flipped: torch.Tensor
    certificate: Certificate

    def summary(self) -> dict:
        """n, clean and adversarial accuracy, and how many images the attack flipped."""
        return {"n": len(self.flipped),
                "clean_accuracy": self.clean_correct.float().mean().item(),
                "adversarial_accuracy": self.adv_correct.float().mean().item(),
                "flipped": int(self.flipped.sum())}


def patch_mask(shape, row, col, patch, device) -> torch.Tensor:
    """A (B, 1, H, W) float mask, 1 on each image's h × w patch at (row, col) and 0 elsewhere."""
    B, _, H, W = shape
    ph, pw = patch
    rows = torch.arange(H, device=device)[None, :]
    cols = torch.arange(W, device=device)[None, :]
    in_r = (rows >= row[:, None]) & (rows < row[:, None] + ph)
    in_c = (cols >= col[:, None]) & (cols < col[:, None] + pw)
    return (in_r[:, :, None] & in_c[:, None, :]).unsqueeze(1).float()


def pgd_patch(model, x: torch.Tensor, mask: torch.Tensor, evaluate, *, steps: int = 100,
              step_size: float = 0.025, generator: torch.Generator | None = None):
    """App. A.2's PGD on the pixels under ``mask`` (B, 1, H, W), the one loop every defense's
    attack runs. The patch starts uniform in [0, 1]; each step moves it by step_size · sign(∇)
    and projects it back onto [0, 1], the rest of the image fixed.

    ``evaluate(a, live)`` gets the iterates ``a`` (n, C, H, W; they require grad) of the samples
    ``live`` still unbroken and returns ``wrong`` (n,) bool, the defense's prediction differs
    from the label, and ``objective`` (n,), differentiable, what the attacker maximises. A sample
    is broken at its first wrong iterate, which is kept, and costs nothing after. The model is
    frozen and in eval mode while it runs. Returns (images, broken)."""
    if steps < 0 or step_size <= 0:
        raise ValueError("steps must be >= 0 and step_size > 0")
    x = x.detach()
    p = torch.rand(x.shape, generator=generator, device="cpu").to(x.device)
    adv = x * (1 - mask) + p * mask
    best = adv.clone()
    broken = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    flags = [(q, q.requires_grad) for q in model.parameters()]
    was_training = model.training
    model.eval()
    for q, _ in flags:
        q.requires_grad_(False)
    try:
        for step in range(steps + 1):
            live = (~broken).nonzero().squeeze(1)        # only unbroken images cost compute
            if len(live) == 0:
                break
            a = adv[live].requires_grad_(True)
            wrong, objective = evaluate(a, live)
            best[live[wrong]] = a.detach()[wrong]        # the first iterate that flips is kept
            broken[live[wrong]] = True
            if step == steps or bool(wrong.all()):
                break
            (grad,) = torch.autograd.grad(objective[~wrong].sum(), a)
            with torch.no_grad():
                m = mask[live]
                stepped = (a + step_size * grad.sign() * m).clamp(0, 1)
                adv[live] = x[live] * (1 - m) + stepped * m
    finally:
        for q, flag in flags:
            q.requires_grad_(flag)
        model.train(was_training)
    best[~broken] = adv.detach()[~broken]
    return best, broken


def patch_attack(model, x: torch.Tensor, y: torch.Tensor, patch=5, *, steps: int = 100,
                 step_size: float = 0.025, margin: float = 1.0, head: str = "heaviside",
                 amp: bool | None = None, generator: torch.Generator | None = None) -> AttackResult:
    """App. A.2's PGD patch attack on a batch of images ``x`` in [0, 1] with labels ``y``.

    ``patch`` is an int (square) or (h, w); ``steps`` and ``step_size`` set PGD, ``margin`` the
    loss's M, ``head`` the model's head. Returns an :class:`AttackResult`.

    Example::

        model, cfg = load_pretrained("scaling-w64-e48-rf7-m0.5-heaviside-s0-seed0")
        adv = patch_attack(model, images, labels, patch=5, head=cfg.head)
        assert not (adv.flipped & adv.certificate.certified).any()    # no certified image broken
        adv.summary()      # {'n': ..., 'clean_accuracy': ..., 'adversarial_accuracy': ..., 'flipped': ...}
    """
    patch = _pair(patch, "patch")
    margin = check_margin(margin)
    if steps < 0 or step_size <= 0:
        raise ValueError("steps must be >= 0 and step_size > 0")
    head_fn = get_head(head)
    model.eval()
    x, y = x.detach(), y.to(x.device).long()
    s = region_scores(model, x, head=head, amp=amp)
    maps = ScoreMaps(s, y)
    cert = maps.certify(patch, model.receptive_field, model.stride, image_size=tuple(x.shape[-2:]))
    target, row, col = cert.target, cert.row, cert.col
    mask = patch_mask(x.shape, row, col, patch, x.device)

    def evaluate(a, live):
        with autocast(x.device, amp):
            logits = model(a)
        scores = head_fn(logits.float())
        wrong = ~ScoreMaps(scores.detach(), y[live]).correct
        S = scores.mean((2, 3))
        t, c = y[live], target[live]
        d = S.gather(1, t[:, None]) - S.gather(1, c[:, None])             # Δ_{c*} / (w h)
        return wrong, -torch.clamp(d.squeeze(1), max=margin)               # L_R for c*, maximised

    best, broken = pgd_patch(model, x, mask, evaluate, steps=steps, step_size=step_size,
                             generator=generator)
    return AttackResult(images=best, row=row, col=col, target=target,
                        clean_correct=maps.correct, adv_correct=maps.correct & ~broken,
                        flipped=maps.correct & broken, certificate=cert)
