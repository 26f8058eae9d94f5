"""Device, precision and inference helpers shared by training, certification and the attack."""
from __future__ import annotations

import contextlib
import functools

import torch

from .heads import get_head


@functools.lru_cache(maxsize=None)
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_amp(device, amp: bool | None = None) -> bool:
    """bf16 autocast by default on CUDA and on CPUs with native bf16; ``amp`` overrides."""
    if amp is not None:
        return bool(amp)
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())


def autocast(device, amp: bool | None = None):
    device = torch.device(device)
    if not use_amp(device, amp):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def configure_backends():
    """TF32 matmuls/convolutions on GPU (bf16 autocast covers the rest)."""
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {name} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def region_scores(model, x, head: str = "heaviside", amp: bool | None = None) -> torch.Tensor:
    """Eval-mode region scores s = head(f_theta(x)) as float32 (B, C, H_out, W_out)."""
    was_training = model.training
    model.eval()
    try:
        with autocast(x.device, amp):
            logits = model(x)
        return get_head(head)(logits.float())
    finally:
        model.train(was_training)
