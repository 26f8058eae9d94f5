"""Experiment profiles and the paper's grids, read from the repository's ``_config.yml``.

A run's configuration is a :class:`TrainConfig`: the profile's values, then explicit overrides.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


#: What a run trains: BagCert's region scorer, or a Derandomized Smoothing base classifier
#: (Levine & Feizi, 2020) with block or column ablations (``bagcert_lib.smoothing``).
METHODS = ("bagcert", "ds-block", "ds-column")
#: Defenses on the same region scorer's class logits: Clipped BagNet (``clipped_bagnet``) and
#: PatchGuard's Mask-BN (``patchguard``); rf and width apply, margin, head and sigma do not.
METHODS += ("cbn", "mask-bn")
#: PatchCleanser's base classifier (Xiang et al., 2022; ``bagcert_lib.patchcleanser``): a ResNet-18
#: on whole images, certified by double masking.
METHODS += ("patchcleanser",)


def parse_test_size(value) -> int | None:
    """A test-set size as the command line, notebooks and sweep give it: ``"all"`` or None → None
    (the whole split), a positive number → that many images; anything else is a ValueError."""
    if value is None or value == "all":
        return None
    if isinstance(value, (int, str)) and not isinstance(value, bool) and str(value).isdigit() \
            and int(value) > 0:
        return int(value)
    raise ValueError(f"test size must be a positive number of images or 'all', got {value!r}")


@dataclass
class TrainConfig:
    """One training run. Defaults are App. A.1's CIFAR-10 BagCert recipe (profile ``paper``).

    ``method`` ds-block / ds-column trains DS's base classifier instead (a CIFAR ResNet-18 of base
    width ``width`` on randomly ablated images, cross-entropy) with the same loader, optimiser and
    schedule; ``ablation_size`` is the block side / column band width and ``theta`` the vote
    threshold. rf, margin, head and sigma do not apply to it.

    ``method`` patchcleanser trains the same ResNet-18 on 3-channel images with Cutout
    (``cutout_holes`` holes of side ``cutout_size``, None: 128/224 of the image side) and
    certifies double masking with ``num_masks`` masks per axis (the R-covering set; or the mask
    stride ``mask_stride`` when set), Xiang et al. (2022).
    """

    dataset: str = "cifar10"         # cifar10 | imagefolder (in memory) | imagenet (streamed, App. A.1.2)
    data: str | None = None          # data location; else $BAGCERT_DATA; else the defaults
    rf: int = 7
    width: int = 768
    margin: float = 0.5              # M = 2R / (w_out h_out)  (§3.3)
    sigma: float = 0.0               # one-hot penalty weight
    head: str = "heaviside"
    shake: bool = True
    seed: int = 0
    epochs: int = 350
    batch_size: int = 96
    lr: float = 1e-3
    warmup_epochs: float = 10
    weight_decay: float = 0.0
    augment: bool = True             # random crop (pad 4; ImageNet: 224 of 256) + horizontal flip
    train_size: int | None = None    # None: the whole training set
    eval_size: int = 1000            # fixed held-out evaluation set (from the test split)
    test_size: int | None = None     # test images certified/attacked after training (None: all)
    eval_patch: int = 5              # patch size of the per-epoch certified accuracy
    amp: bool | None = None          # bf16 autocast; None: when the device supports it
    channels_last: bool | None = None  # None: CUDA, AVX-512 CPUs, AVX2 where the model is safe (runtime.use_channels_last)
    device: str | None = None        # None: cuda if available else cpu
    sync_bn: bool = True             # several processes: BatchNorm over the global batch
    compile: bool = False            # torch.compile the training model (opt-in; 0.88x eager on AVX2, width 32)
    profile: str | None = None
    method: str = "bagcert"
    ablation_size: int = 4           # DS: block side s / column band width b
    theta: float = 0.3               # DS: an ablation votes for every class with softmax >= theta
    num_masks: int = 6               # PatchCleanser: k masks per axis (the R-covering set)
    mask_stride: int | None = None   # PatchCleanser: mask stride s instead of k
    cutout_holes: int = 2            # PatchCleanser training: Cutout holes per image
    cutout_size: int | None = None   # PatchCleanser training: hole side (None: 128/224 of the image)
    workers: int | None = None       # DataLoader workers, streamed data (None: GPU cores - 1 <= 8; CPU 0)
    checkpoint_minutes: float = 10.0  # also save the resume checkpoint mid-epoch this often (0: epoch ends only)

    @property
    def smoothing(self) -> str | None:
        """``block`` or ``column`` for a DS run, else None."""
        return self.method[3:] if self.method.startswith("ds-") else None

    def validate(self) -> "TrainConfig":
        from .heads import HEADS
        from .model import CIFAR_KERNELS, IMAGENET_KERNELS

        known = {"cifar10": CIFAR_KERNELS, "imagenet": IMAGENET_KERNELS}.get(
            self.dataset, {**CIFAR_KERNELS, **IMAGENET_KERNELS})
        for name in ("margin", "sigma", "lr", "warmup_epochs", "weight_decay", "theta",
                     "checkpoint_minutes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if self.weight_decay < 0 or self.seed < 0 or self.eval_size < 1:
            raise ValueError(f"weight_decay and seed must be >= 0 and eval_size >= 1, got "
                             f"{self.weight_decay!r}, {self.seed!r}, {self.eval_size!r}")
        if self.dataset not in ("cifar10", "imagefolder", "imagenet"):
            raise ValueError(f"unknown dataset {self.dataset!r}; choose 'cifar10', 'imagefolder' or 'imagenet'")
        if self.workers is not None and int(self.workers) < 0:
            raise ValueError(f"workers must be >= 0 or None, got {self.workers!r}")
        if not float(self.checkpoint_minutes) >= 0:
            raise ValueError(f"checkpoint_minutes must be >= 0 (0: at epoch ends only), "
                             f"got {self.checkpoint_minutes!r}")
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if int(self.ablation_size) < 1 or not 0 <= self.theta <= 1:
            raise ValueError(f"ablation_size must be >= 1 and theta in [0, 1], got "
                             f"{self.ablation_size!r}, {self.theta!r}")
        if (int(self.num_masks) < 1 or self.mask_stride is not None and int(self.mask_stride) < 1
                or int(self.cutout_holes) < 0 or self.cutout_size is not None and int(self.cutout_size) < 1):
            raise ValueError(f"num_masks and mask_stride must be >= 1, cutout_holes >= 0 and "
                             f"cutout_size >= 1, got {self.num_masks!r}, {self.mask_stride!r}, "
                             f"{self.cutout_holes!r}, {self.cutout_size!r}")
        if self.rf not in known:
            raise ValueError(f"unknown receptive field {self.rf!r}; choose one of {sorted(known)}")
        if self.head not in HEADS:
            raise ValueError(f"unknown head {self.head!r}; choose one of {HEADS}")
        if not self.margin > 0:
            raise ValueError(f"margin M must be positive, got {self.margin}")
        if self.sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        for name in ("width", "epochs", "batch_size", "eval_patch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.test_size is not None and self.test_size < 1:
            raise ValueError(f"test_size must be positive or None, got {self.test_size}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be positive or None, got {self.train_size}")
        if not self.lr > 0 or self.warmup_epochs < 0:
            raise ValueError("lr must be > 0 and warmup_epochs >= 0")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def _size_tag(self) -> str:
        """``-w{width}-e{epochs}`` when they differ from the profile's own for this method (a DS
        run trained at another budget), else ''."""
        try:
            own = profile_config(self.profile, method=self.method)
        except (ValueError, FileNotFoundError):
            return ""
        same = (own.width, own.epochs) == (self.width, self.epochs)
        return "" if same else f"-w{self.width}-e{self.epochs}"

    def run_name(self) -> str:
        if self.smoothing:
            return (f"{self.profile or 'custom'}-{self.method}{self.ablation_size}"
                    f"-theta{self.theta:g}{self._size_tag()}-seed{self.seed}")
        prefix = self.profile or "custom"
        if self.method == "patchcleanser":
            masks = f"s{self.mask_stride}" if self.mask_stride else f"k{self.num_masks}"
            return f"{prefix}-patchcleanser-w{self.width}-e{self.epochs}-{masks}-seed{self.seed}"
        if prefix == "scaling":      # the compute study: one profile, many sizes
            prefix += f"-w{self.width}-e{self.epochs}"
        if self.method in ("cbn", "mask-bn"):
            return f"{prefix}-{self.method}-rf{self.rf}-seed{self.seed}"
        return f"{prefix}-rf{self.rf}-m{self.margin:g}-{self.head}-s{self.sigma:g}-seed{self.seed}"


def config_path(path=None) -> Path:
    for p in (path, os.environ.get("BAGCERT_CONFIG"), REPO_ROOT / "_config.yml", Path("_config.yml")):
        if p and Path(p).is_file():
            return Path(p)
    raise FileNotFoundError("no _config.yml found (looked at the argument, $BAGCERT_CONFIG, "
                            f"{REPO_ROOT / '_config.yml'} and ./_config.yml)")


def load_config(path=None) -> dict:
    with open(config_path(path)) as f:
        return yaml.safe_load(f)


def resolve_profile(name: str) -> str:
    """``auto`` is ``$BAGCERT_PROFILE`` if set, else ``paper`` with CUDA and ``cpu`` otherwise
    (printed). The tests set BAGCERT_PROFILE=smoke to run every notebook at smoke scale."""
    if name == "auto" and os.environ.get("BAGCERT_PROFILE"):
        name = os.environ["BAGCERT_PROFILE"]
        print(f"profile auto -> {name} ($BAGCERT_PROFILE)")
    elif name == "auto":
        import torch

        name = "paper" if torch.cuda.is_available() else "cpu"
        print(f"profile auto -> {name} ({'CUDA found' if name == 'paper' else 'no CUDA'})")
    return name


def profile_config(name: str = "auto", path=None, **overrides) -> TrainConfig:
    """The :class:`TrainConfig` of profile ``name`` with ``overrides`` applied (None = keep).

    A DS run (``method`` ds-block / ds-column) first takes the profile's ``smoothing`` values
    (e.g. a smaller width) and those under its method's name there, then the overrides; a
    PatchCleanser run the profile's ``patchcleanser`` values."""
    cfg = load_config(path)
    name = resolve_profile(name)
    profiles = cfg["profiles"]
    if name not in profiles:
        raise ValueError(f"unknown profile {name!r}; choose one of {sorted(profiles) + ['auto']}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in profiles[name].items() if k in fields}
    method = str(overrides.get("method") or values.get("method", "bagcert"))
    if method.startswith("ds-"):
        ds = profiles[name].get("smoothing") or {}
        values.update({k: v for k, v in ds.items() if k in fields})
        values.update(ds.get(method) or {})
    if method == "patchcleanser":
        values.update({k: v for k, v in (profiles[name].get(method) or {}).items() if k in fields})
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(fields)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(profile=name, **values).validate()


def grids(path=None) -> dict:
    """The paper's grids (receptive fields, margins, patch shapes, Figure 8 heads and seeds)."""
    return load_config(path)["grids"]
