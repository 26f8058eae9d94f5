"""Device, precision and inference helpers shared by training, certification and the attack.

The defaults follow the machine: bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16
or AMX), fp32 elsewhere; channels_last where it is faster and safe (:func:`use_channels_last`).
``amp`` and ``channels_last`` in a config override both. :func:`region_scores` is the one way the
library turns images into region scores.
"""
from __future__ import annotations

import contextlib
import functools

import torch

from .heads import get_head


#: The CPU flags that decide precision and memory format here (``/proc/cpuinfo`` names).
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


@functools.lru_cache(maxsize=None)
def cpu_features() -> dict:
    """This CPU's model name and the :data:`CPU_FLAGS` it has (False where /proc/cpuinfo is absent).

    Every benchmark and run records it: timings differ 5–7× between CPU classes."""
    name, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    import platform
    return {"model": name or platform.processor() or platform.machine(),
            **{flag: flag in flags for flag in CPU_FLAGS}}


def cpu_class(features: dict | None = None) -> str:
    """``avx512-bf16`` (native bf16), ``avx512`` or ``avx2-or-older``: the classes timed apart.
    ``features``: a recorded :func:`cpu_features` (e.g. a run's provenance); default this CPU."""
    f = features or cpu_features()
    if f.get("avx512_bf16") or f.get("amx_bf16"):
        return "avx512-bf16"
    return "avx512" if f.get("avx512f") else "avx2-or-older"


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX)."""
    f = cpu_features()
    return f["avx512_bf16"] or f["amx_bf16"]


#: On AVX2-only CPUs torch 2.13/2.14 crash (SIGSEGV, SIGABRT) or spin forever in the channels_last
#: backward of a strided convolution with few input channels. Measured on an AMD EPYC without
#: AVX-512, torch 2.14.1, one child process per shape, fp32, 8 steps (2026-12-01): every 1×1
#: stride-2 convolution with 2–7 input channels crashed; 1, 8 and 16 input channels, every stride-1
#: convolution and every 3×3 stride-2 one passed. A model is kept contiguous there when any strided
#: convolution has fewer input channels than this.
AVX2_SAFE_STRIDED_IN_CHANNELS = 8


def channels_last_safe_on_avx2(model: torch.nn.Module) -> bool:
    """True when ``model`` has no strided convolution with fewer than
    :data:`AVX2_SAFE_STRIDED_IN_CHANNELS` input channels (the layers that crash on AVX2 CPUs)."""
    return not any(isinstance(m, torch.nn.Conv2d) and max(m.stride) > 1
                   and m.in_channels < AVX2_SAFE_STRIDED_IN_CHANNELS for m in model.modules())


def use_channels_last(device, channels_last: bool | None = None,
                      model: torch.nn.Module | None = None) -> bool:
    """channels_last by default on CUDA and on CPUs with AVX-512; on AVX2-only CPUs for a
    ``model`` that :func:`channels_last_safe_on_avx2` passes; contiguous elsewhere (and on AVX2
    when no model is named).

    On AVX2-only CPUs, torch 2.13/2.14's channels_last backward of a 1×1 stride-2 convolution with
    2–7 input channels crashes or spins forever (DS's ResNet-18 shortcut at small widths).
    Elsewhere channels_last is mostly faster for the region scorer: 1.26–1.61× on an AMD EPYC
    with AVX-512 at widths 24–96 (but 0.88× at width 16 in bf16), 1.01–1.29× on a Xeon at width
    32, 1.16–1.50× in fp32 on AVX2 at widths 32–64 (``benchmarks/train_throughput.py --formats``;
    results/benchmarks/train_throughput*.json). ``channels_last`` overrides the choice."""
    if channels_last is not None:
        return bool(channels_last)
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    if cpu_features()["avx512f"]:
        return True
    return model is not None and channels_last_safe_on_avx2(model)


def memory_format(device, channels_last: bool | None = None,
                  model: torch.nn.Module | None = None) -> torch.memory_format:
    """``torch.channels_last`` where :func:`use_channels_last` says so, else contiguous."""
    return (torch.channels_last if use_channels_last(device, channels_last, model)
            else torch.contiguous_format)


def default_device() -> torch.device:
    """CUDA when a GPU is present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_amp(device, amp: bool | None = None) -> bool:
    """bf16 autocast by default on CUDA and on CPUs with native bf16; ``amp`` overrides."""
    if amp is not None:
        return bool(amp)
    device = torch.device(device)
    return device.type == "cuda" or (device.type == "cpu" and cpu_supports_bf16())


def precision(device, amp: bool | None = None) -> str:
    """``bf16`` or ``fp32``: the arithmetic of a forward pass on ``device`` (:func:`use_amp`).
    A certification records it on every row and keeps one (:func:`bagcert_lib.runs.certify_run`)."""
    return "bf16" if use_amp(device, amp) else "fp32"


def autocast(device, amp: bool | None = None):
    """A bf16 autocast context where :func:`use_amp` says so, else a context that does nothing."""
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


def compiled(model, enabled: bool = False):
    """``torch.compile(model)`` when ``enabled`` (config ``compile``; opt-in: 0.88× eager on an AVX2
    CPU at width 32, ``benchmarks/train_throughput.py --modes``; unmeasured on GPUs). The module
    itself keeps the weights, so checkpoints never see the wrapper."""
    return torch.compile(model) if enabled else model


#: Input pixels per CPU thread in one forward pass of a defense that makes many passes per image
#: (PatchCleanser, Derandomized Smoothing, Mask-DS): 64 CIFAR-10 images. A ResNet-18's activations
#: then stay in the core's cache; 512 images a pass ran 1.3–1.9× slower on one Xeon thread
#: (``benchmarks/forward_batch.py``, whose record also checks that the logits do not change).
CPU_PIXELS_PER_THREAD = 64 * 32 * 32


def forward_batch(x: torch.Tensor, chunk: int | None = None, accelerator: int = 1024) -> int:
    """Images per forward pass for inputs like ``x`` (N, C, H, W): ``chunk`` when given; on a CPU
    :data:`CPU_PIXELS_PER_THREAD` per thread (64 CIFAR-10 images, 1 ImageNet one, per thread);
    elsewhere ``accelerator`` (a GPU wants large batches). The batch never changes a model's
    logits here (checked per model by the benchmark), only the speed."""
    if chunk is not None:
        return int(chunk)
    if x.device.type != "cpu":
        return int(accelerator)
    pixels = x.shape[-2] * x.shape[-1]
    return max(1, CPU_PIXELS_PER_THREAD * torch.get_num_threads() // pixels)


def device_name(device) -> str:
    """How records name a device: the GPU's name, or ``CPU: <model> (<threads> threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_features()['model']} ({torch.get_num_threads()} threads)"


@torch.no_grad()
def region_scores(model, x, head: str = "heaviside", amp: bool | None = None) -> torch.Tensor:
    """Region scores s = head(f_θ(x)) in evaluation mode, as float32 (B, C, H_out, W_out).

    ``x``: images (B, 3, H, W) in [0, 1] on the model's device; ``head``: the model's head
    (``cfg.head`` of a trained run). The model's training mode is restored afterwards; ``amp``
    overrides the bf16 default of :func:`use_amp`.

    Example::

        model, cfg = load_pretrained("scaling-w64-e48-rf7-m0.5-heaviside-s0-seed0")
        s = region_scores(model, images, head=cfg.head)       # (B, 10, 32, 32), each 0 or 1
        s.sum((2, 3)).argmax(1)                                # g_Σ's prediction: the most votes
    """
    was_training = model.training
    model.eval()
    try:
        with autocast(x.device, amp):
            logits = model(x)
        return get_head(head)(logits.float())
    finally:
        model.train(was_training)
