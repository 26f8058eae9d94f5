"""What differs between the certified defenses, behind one interface.

The trainer (``train.py``) owns the loop, optimiser, schedule, data order, checkpoints and records;
a :class:`Method` owns the model, the per-step loss and the certificate. ``method_for(cfg)``
picks :class:`BagCert` (§3), :class:`Smoothing` (Levine & Feizi, 2020), or a defense on the same
region scorer's class logits, :class:`LocalLogitDefense` (CBN, Zhang et al., 2020; Mask-BN,
Xiang et al., 2021), or :class:`PatchCleanser` (Xiang et al., 2022), from ``cfg.method``. A method with an ``attack`` is attacked with it
(``runs.attack_run``); BagCert with App. A.2's.
"""
from __future__ import annotations

from typing import Protocol

import pandas as pd
import torch
from torch import nn

from . import clipped_bagnet, mask_ds, patchcleanser, patchguard, smoothing
from .certifier import certify_model
from .config import TrainConfig
from .heads import get_head
from .loss import total_loss
from .model import cifar_scorer, imagenet_scorer
from .runtime import autocast


class Method(Protocol):
    """One certified defence: its model, training loss and certificate."""

    #: the ``condition`` row of :meth:`evaluate` reported as an epoch's certified accuracy
    condition: str
    #: the state_dict key of the last layer's weight (its rows are the classes)
    classifier_key: str

    def build_model(self, cfg: TrainConfig, num_classes: int = 10) -> nn.Module: ...

    def prepare(self, x: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
        """The step's random input transform, applied to the *global* batch before it is split
        over ranks, so a multi-process run draws what a one-process run draws."""
        ...

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: TrainConfig,
             device) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, batches, patches, cfg: TrainConfig, device,
                 progress: bool = False) -> pd.DataFrame: ...


def cross_entropy(model, x, y, cfg, device) -> torch.Tensor:
    """The plain classifier's loss (DS's and PatchCleanser's base classifiers): cross-entropy of
    the logits, the forward pass under the run's autocast."""
    with autocast(device, cfg.amp):
        logits = model(x)
    return torch.nn.functional.cross_entropy(logits.float(), y)


class BagCert:
    """§3: region scorer (App. A.1), margin loss L_R + σ L_oh (§3.3), Conditions 3.2 / 3.3 (§3.1)."""

    condition = "3.2"
    classifier_key = "classifier.weight"

    def build_model(self, cfg, num_classes=10):
        if cfg.rf in (17, 25, 29):
            return imagenet_scorer(cfg.rf, num_classes=num_classes)
        return cifar_scorer(cfg.rf, cfg.width, num_classes=num_classes, shake=cfg.shake)

    def prepare(self, x, cfg):
        return x

    def loss(self, model, x, y, cfg, device):
        with autocast(device, cfg.amp):
            logits = model(x)
        return total_loss(get_head(cfg.head)(logits.float()), y, cfg.margin, cfg.sigma)

    def evaluate(self, model, batches, patches, cfg, device, progress=False):
        return certify_model(model, batches, patches, head=cfg.head, device=device, amp=cfg.amp,
                             progress=progress)


class Smoothing:
    """Derandomized Smoothing (Levine & Feizi, 2020): ResNet-18 on one random block / column
    ablation per image, cross-entropy; certified by vote counts (condition ``DS``). A column
    model is also certified by PatchGuard's robust masking on the same forward passes
    (:mod:`~bagcert_lib.mask_ds`, condition ``Mask-DS``), as BagCert reports Conditions 3.2
    and 3.3 of one model."""

    condition = "DS"
    classifier_key = "linear.weight"

    def __init__(self, kind: str):
        self.kind = kind

    def build_model(self, cfg, num_classes=10):
        return smoothing.resnet18(num_classes=num_classes, width=cfg.width)

    def prepare(self, x, cfg):
        return smoothing.random_ablation(x, self.kind, cfg.ablation_size)   # global RNG

    def loss(self, model, x, y, cfg, device):
        return cross_entropy(model, x, y, cfg, device)

    def evaluate(self, model, batches, patches, cfg, device, progress=False):
        if self.kind == mask_ds.KIND:          # DS's rows first, then Mask-DS's
            return mask_ds.certify_model(model, batches, patches, size=cfg.ablation_size,
                                         theta=cfg.theta, device=device, amp=cfg.amp,
                                         progress=progress, desc="certify DS, Mask-DS")
        return smoothing.certify_model(model, batches, patches, kind=self.kind,
                                       size=cfg.ablation_size, theta=cfg.theta, device=device,
                                       amp=cfg.amp, progress=progress)


class LocalLogitDefense(BagCert):
    """BagCert's region scorer with per-region class logits in place of the Heaviside head,
    trained, certified and attacked by one of :mod:`~bagcert_lib.clipped_bagnet` (``cbn``) or
    :mod:`~bagcert_lib.patchguard` (``mask-bn``)."""

    MODULES = {"cbn": clipped_bagnet, "mask-bn": patchguard}

    def __init__(self, name: str):
        self.defense = self.MODULES[name]
        self.condition = self.defense.CONDITION

    def loss(self, model, x, y, cfg, device):
        return self.defense.loss(model, x, y, cfg, device)

    def evaluate(self, model, batches, patches, cfg, device, progress=False):
        return self.defense.certify_model(model, batches, patches, device=device, amp=cfg.amp,
                                          progress=progress)

    def attack(self, model, x, y, patch, **kw):
        return self.defense.attack(model, x, y, patch, **kw)


class PatchCleanser:
    """PatchCleanser (Xiang et al., 2022): a ResNet-18 on 3-channel images trained with Cutout
    (the authors' masking augmentation), cross-entropy; certified by double masking (``PC``)."""

    condition = "PC"
    classifier_key = "linear.weight"

    def build_model(self, cfg, num_classes=10):
        return smoothing.resnet18(num_classes=num_classes, width=cfg.width, in_channels=3)

    def prepare(self, x, cfg):
        return patchcleanser.random_cutout(x, cfg.cutout_holes, cfg.cutout_size)   # global RNG

    def loss(self, model, x, y, cfg, device):
        return cross_entropy(model, x, y, cfg, device)

    def evaluate(self, model, batches, patches, cfg, device, progress=False):
        return patchcleanser.certify_model(model, batches, patches, num_masks=cfg.num_masks,
                                           stride=cfg.mask_stride, device=device, amp=cfg.amp,
                                           progress=progress)


def method_for(cfg: TrainConfig) -> Method:
    """The :class:`Method` of ``cfg.method`` (bagcert, ds-block, ds-column, cbn, mask-bn, patchcleanser)."""
    if cfg.method == "patchcleanser":
        return PatchCleanser()
    if cfg.method in LocalLogitDefense.MODULES:
        return LocalLogitDefense(cfg.method)
    return Smoothing(cfg.smoothing) if cfg.smoothing else BagCert()
