"""Batched augmentation (random crop with padding + flip, App. A.1.1) and the in-memory batch
iterator; both run on the tensor's device."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

def augment(x: torch.Tensor, generator: torch.Generator | None = None, *, pad: int = 4, flip: bool = True) -> torch.Tensor:
    """Random crop with ``pad`` zero-padding and random horizontal flip (App. A.1).

    Batched: one ``F.pad`` and one gather; each sample gets its own offset in
    [0, 2*pad] and flip (p=0.5). ``generator`` must be on ``x``'s device type.
    """
    if generator is not None and generator.device.type != x.device.type:
        raise ValueError(f"generator is on {generator.device}, but x is on {x.device}")
    b, _, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)
    cols = torch.arange(w, device=dev).expand(b, w)
    dy, dx, flipped = _draws(b, generator, dev, pad, flip)
    if pad > 0:
        x = F.pad(x, (pad, pad, pad, pad))
        rows = rows + dy
        cols = cols + dx
    if flip:
        cols = torch.where(flipped, cols.flip(1), cols)
    batch = torch.arange(b, device=dev)[:, None, None, None]
    channel = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return x[batch, channel, rows[:, None, :, None], cols[:, None, None, :]]


def _draws(b: int, generator, device, pad: int, flip: bool):
    """The random numbers of :func:`augment` for a batch of ``b``, in the order it draws them."""
    dy = dx = flipped = None
    if pad > 0:
        dy = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=device)
        dx = torch.randint(0, 2 * pad + 1, (b, 1), generator=generator, device=device)
    if flip:
        flipped = torch.randint(0, 2, (b, 1), generator=generator, device=device).bool()
    return dy, dx, flipped


_augment = augment  # `batches` has a parameter named `augment`


def num_batches(n: int, batch_size: int, drop_last: bool) -> int:
    """Number of batches :func:`batches` yields for ``n`` samples."""
    return n // batch_size if drop_last else math.ceil(n / batch_size)


def batches(x_uint8, y, batch_size, *, shuffle=False, generator=None, device="cpu",
            augment=False, drop_last=False, channels_last=False, start=0):
    """Yield (float32 images in [0, 1], int64 labels) on ``device``, one epoch.

    Shuffling uses ``torch.randperm`` with the CPU ``generator``. With ``augment=True``
    applies :func:`augment` (pad 4, flip; App. A.1) on ``device``; its random numbers come
    from ``generator`` (on a GPU: from a device generator seeded by it). ``start``: skip the
    epoch's first ``start`` batches, drawing their augmentation numbers so that the rest are
    the very batches of an epoch iterated from the beginning (a run resumed mid-epoch).
    """
    device = torch.device(device)
    n = len(x_uint8)
    order = torch.randperm(n, generator=generator) if shuffle else None
    aug_gen = None
    if augment and generator is not None:
        if generator.device.type == device.type:
            aug_gen = generator
        else:
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            aug_gen = torch.Generator(device=device).manual_seed(seed)
    for i in range(num_batches(n, batch_size, drop_last)):
        if i < start:
            if augment:
                _draws(min(batch_size, n - i * batch_size), aug_gen, device, 4, True)
            continue
        if order is None:
            xb, yb = x_uint8[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size]
        else:
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb, yb = x_uint8[idx.to(x_uint8.device)], y[idx.to(y.device)]
        xb = xb.to(device, non_blocking=True).float().div_(255)
        yb = yb.to(device, dtype=torch.int64, non_blocking=True)
        if augment:
            xb = _augment(xb, aug_gen, pad=4, flip=True)
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yield xb, yb
