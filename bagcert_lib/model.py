"""The region scorer f_θ (§3.2, App. A.1): a BagNet-style ResNet with a small receptive field.

The network maps an image in [0, 1] to a dense map of region logits (B, C, H_out, W_out): no
pooling and no dense layer, so every output position sees only a small window of the input.
Its geometry (receptive field and output stride) is computed from its own convolutions
(:func:`geometry`), never looked up, and it is what the certifier's R(l) is built from.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# App. A.1 kernel sizes per receptive field: (stem, b1, ..., b8).
CIFAR_KERNELS = {
    5: (3, 3, 1, 1, 1, 1, 1, 1, 1),
    7: (3, 3, 1, 3, 1, 1, 1, 1, 1),
    9: (3, 3, 1, 3, 1, 3, 1, 1, 1),
    11: (3, 3, 1, 3, 1, 3, 1, 3, 1),
    13: (3, 3, 3, 3, 1, 3, 1, 3, 1),
}
IMAGENET_KERNELS = {
    17: (3, 3, 1, 3, 1, 3, 1, 1, 1),
    25: (3, 3, 1, 3, 1, 3, 1, 3, 1),
    29: (3, 3, 3, 3, 1, 3, 1, 3, 1),
}
IMAGENET_WIDTHS = (64, 64, 64, 128, 128, 256, 256, 512, 512)  # stem, b1..b8
IMAGENET_STRIDES = (1, 2, 1, 2, 1, 1, 1, 1, 1)  # stride 2 in blocks 1 and 3: 56×56 outputs for 224×224


@dataclass(frozen=True)
class Geometry:
    """Where an output sees the input, per axis: output i depends on the input positions
    [i · stride + lo, i · stride + hi]; the receptive field is hi − lo + 1."""

    stride: int
    lo: int
    hi: int

    @property
    def receptive_field(self) -> int:
        """hi − lo + 1: how many input positions one output sees, per axis."""
        return self.hi - self.lo + 1

    def then_conv(self, kernel: int, stride: int, padding: int) -> "Geometry":
        """The geometry after a further convolution with this ``kernel``, ``stride`` and ``padding``."""
        j = self.stride
        return Geometry(j * stride, self.lo - padding * j, self.hi + (kernel - 1 - padding) * j)

    def union(self, other: "Geometry") -> "Geometry":
        """The geometry of two parallel paths added together (a residual block): the wider window."""
        if other.stride != self.stride:
            raise ValueError("parallel paths with different strides")
        return Geometry(self.stride, min(self.lo, other.lo), max(self.hi, other.hi))


IDENTITY = Geometry(1, 0, 0)


def geometry(module: nn.Module, g: Geometry = IDENTITY) -> Geometry:
    """The :class:`Geometry` of ``module``, propagated through its own layers: convolutions,
    sequences, parallel paths (a block's ``paths()``) and position-wise layers. A layer with no
    rule raises a TypeError, so a model is never certified with a guessed receptive field.

    >>> g = geometry(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
    ...                            nn.Conv2d(8, 10, 3, stride=2, padding=1)))
    >>> g.receptive_field, g.stride
    (5, 2)
    """
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        if kh != kw or module.stride[0] != module.stride[1] or module.padding[0] != module.padding[1]:
            raise ValueError("only square kernels/strides/paddings are supported")
        if module.dilation != (1, 1):
            raise ValueError("dilated convolutions are not supported")
        return g.then_conv(kh, module.stride[0], module.padding[0])
    if hasattr(module, "paths"):  # residual block: union over parallel paths and the shortcut
        out = None
        for path in module.paths():
            gp = geometry(path, g)
            out = gp if out is None else out.union(gp)
        return out
    if isinstance(module, nn.Sequential):
        for m in module:
            g = geometry(m, g)
        return g
    if isinstance(module, (nn.BatchNorm2d, nn.ReLU, nn.Identity, Normalize)):
        return g  # position-wise
    raise TypeError(f"no geometry rule for {type(module).__name__}; add one before certifying with it")


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> nn.Sequential:
    """A k×k convolution (padding k // 2, no bias), BatchNorm and, if ``relu``, a ReLU."""
    layers = [nn.Conv2d(cin, cout, k, stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _ShakeShake(torch.autograd.Function):
    """Batch-wise shake-shake (Gastaldi, 2017): alpha mixes the forward, beta the backward."""

    @staticmethod
    def forward(ctx, a, b, alpha, beta):
        ctx.save_for_backward(beta)
        return alpha * a + (1 - alpha) * b

    @staticmethod
    def backward(ctx, grad):
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


class Block(nn.Module):
    """A residual block with kernel k ∈ {1, 3} (App. A.1).

    ``shake=True`` (CIFAR): two paths mixed by shake-shake; for k = 3 one path is 3×3 then 1×1,
    the other 1×1 then 3×3, so the block's receptive field grows by k − 1 either way.
    ``shake=False`` (ImageNet): one k×k then 1×1 path.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, shake: bool = True):
        super().__init__()
        if k not in (1, 3):
            raise ValueError(f"block kernel must be 1 or 3, got {k}")
        self.shake = shake
        self.path_a = nn.Sequential(conv_bn(cin, cout, k, stride), conv_bn(cout, cout, 1, relu=False))
        if shake:
            if stride != 1:
                raise ValueError("shake-shake blocks use stride 1")
            self.path_b = nn.Sequential(conv_bn(cin, cout, 1), conv_bn(cout, cout, k, relu=False))
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride, relu=False)
        else:
            self.shortcut = nn.Identity()

    def paths(self):
        """The parallel paths whose sum is the block's output (for :func:`geometry`)."""
        return [self.path_a, self.shortcut] + ([self.path_b] if self.shake else [])

    def forward(self, x):
        """ReLU(path_a(x) ⊕ path_b(x) + shortcut(x)), ⊕ a random convex mix in training (shake-shake)
        and the mean in evaluation."""
        a = self.path_a(x)
        if self.shake:
            b = self.path_b(x)
            if self.training:
                alpha = torch.rand((), device=x.device, dtype=a.dtype)
                beta = torch.rand((), device=x.device, dtype=a.dtype)
                a = _ShakeShake.apply(a, b, alpha, beta)
            else:
                a = 0.5 * (a + b)
        return F.relu(a + self.shortcut(x))


class Normalize(nn.Module):
    """Per-channel standardisation inside the model, so inputs (and patches) live in [0, 1]."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        """(x − mean) / std per channel."""
        return (x - self.mean) / self.std


class RegionScorer(nn.Module):
    """A region scorer: images (B, 3, H, W) in [0, 1] → region logits (B, C, H / stride, W / stride) (§3.2).

    Output (i, j) sees only the input window of side ``receptive_field`` centred at
    (i · stride, j · stride); both attributes are computed from the layers by :func:`geometry`,
    and they are what the certifier needs. Build one with :func:`cifar_scorer` or
    :func:`imagenet_scorer`.
    """

    def __init__(self, kernels, widths, strides, num_classes=10, shake=True,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), in_channels=3):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.stem = conv_bn(in_channels, widths[0], kernels[0], strides[0])
        self.blocks = nn.Sequential(*[
            Block(widths[i], widths[i + 1], kernels[i + 1], strides[i + 1], shake=shake)
            for i in range(len(kernels) - 1)
        ])
        self.classifier = nn.Conv2d(widths[-1], num_classes, 1)
        self.num_classes = num_classes
        g = geometry(nn.Sequential(self.stem, self.blocks, self.classifier))
        if g.lo + g.hi != 0:  # certify() assumes windows centred on i * stride
            raise ValueError(f"receptive field is not centred: {g}")
        self.geometry = g

    @property
    def receptive_field(self) -> int:
        """The side of the input window each output sees (odd, from the layers)."""
        return self.geometry.receptive_field

    @property
    def stride(self) -> int:
        """Pixels between neighbouring outputs."""
        return self.geometry.stride

    def forward(self, x):
        """Region logits f_θ(x): (B, C, H_out, W_out) for images x (B, 3, H, W) in [0, 1]; a head
        (:mod:`bagcert_lib.heads`) turns them into region scores."""
        return self.classifier(self.blocks(self.stem(self.normalize(x))))


def cifar_scorer(rf: int = 7, width: int = 768, num_classes: int = 10, shake: bool = True,
                 mean=None, std=None) -> RegionScorer:
    """The CIFAR-10 region scorer of App. A.1: a 3×3 stem and 8 shake-shake blocks at stride 1
    and constant ``width`` (768 in the paper), for receptive field ``rf`` ∈ {5, 7, 9, 11, 13}.

    >>> model = cifar_scorer(rf=7, width=32)
    >>> model.receptive_field, model.stride, tuple(model(torch.rand(2, 3, 32, 32)).shape)
    (7, 1, (2, 10, 32, 32))
    """
    from .data import CIFAR10_MEAN, CIFAR10_STD

    if rf not in CIFAR_KERNELS:
        raise ValueError(f"unknown CIFAR receptive field {rf!r}; choose one of {sorted(CIFAR_KERNELS)}")
    if int(width) < 1:
        raise ValueError(f"width must be a positive integer, got {width!r}")
    return RegionScorer(CIFAR_KERNELS[rf], (int(width),) * 9, (1,) * 9, num_classes, shake,
                        mean or CIFAR10_MEAN, std or CIFAR10_STD)


def imagenet_scorer(rf: int = 17, num_classes: int = 1000, mean=(0.485, 0.456, 0.406),
                    std=(0.229, 0.224, 0.225)) -> RegionScorer:
    """The ImageNet region scorer of App. A.1: widths 64 … 512, stride 2 in blocks 1 and 3 (56×56
    outputs for 224×224 images), no shake-shake, for ``rf`` ∈ {17, 25, 29}."""
    if rf not in IMAGENET_KERNELS:
        raise ValueError(f"unknown ImageNet receptive field {rf!r}; choose one of {sorted(IMAGENET_KERNELS)}")
    return RegionScorer(IMAGENET_KERNELS[rf], IMAGENET_WIDTHS, IMAGENET_STRIDES, num_classes,
                        shake=False, mean=mean, std=std)


def num_parameters(model: nn.Module) -> int:
    """The number of parameters (Table 1: 38 M for RF 7 at width 768)."""
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def conv_macs(model: nn.Module, image_size=(32, 32)) -> int:
    """Multiply-accumulates of every convolution for one image at ``image_size``.

    Counted from the layers on a real forward pass: output elements × (in_channels / groups) ×
    kernel area per convolution (and per linear layer, for DS's ResNet). BatchNorm, ReLU and the
    additions are not counted. At stride 1 (CIFAR) this is the convolutions' weights times the
    number of pixels, which is how it is checked against Table 1's parameter counts.
    """
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * (module.in_channels // module.groups) * kh * kw
        else:
            total += output.numel() * module.in_features

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    in_channels = layers[0].in_channels      # 3, or 6 for DS's ablated images
    hooks = [m.register_forward_hook(count) for m in layers]
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, in_channels, *image_size, device=p.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return int(total)


def training_flops(macs_per_image: int, images_seen: int) -> float:
    """Training FLOPs: 2 FLOPs per multiply-accumulate, × 3 for forward and backward (the backward
    costs about twice the forward), × the images seen."""
    return 2.0 * 3.0 * macs_per_image * images_seen
