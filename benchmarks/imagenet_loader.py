"""ImageNet loader images/s per worker beside RF 17's training images/s at 224 px.

    OMP_NUM_THREADS=1 python benchmarks/imagenet_loader.py --images 300

Writes a folder of ``--images`` JPEGs of ImageNet's typical 500x375 (smooth random fields with
fine noise at quality 90, about 84 kB per file against ImageNet's typical 110 kB), then times:

* the loader of a training run (``StreamingImages.batches``: torchvision decode, shorter side 256,
  random 224 crop + flip, collate, float in [0, 1]) in-process (workers=0: one worker's rate on
  one core) and with one DataLoader worker; the centre-crop test loader; decode vs. rescale per image;
* a bare training step of the ImageNet region scorer (App. A.1.2) at 224 px on one thread, bf16
  only where this CPU has it natively, memory format from ``bagcert_lib.runtime``.

From those: how many loader workers one training process needs here, and how many a GPU run
needs, for an *assumed* GPU rate (``--gpu-img-s``, else scaled from a reference network's
published rate by multiply-accumulates; every assumption is written into the JSON).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image

from bagcert_lib import data as D
from bagcert_lib.config import REPO_ROOT
from bagcert_lib.heads import heaviside
from bagcert_lib.loss import total_loss
from bagcert_lib.model import conv_macs, imagenet_scorer
from bagcert_lib.runtime import autocast, cpu_class, cpu_features, memory_format, use_amp, use_channels_last
from bagcert_lib.train import git_commit


def write_images(root: Path, n: int, classes: int = 4, size=(375, 500), seed=0, split=None) -> float:
    """``n`` JPEGs in train/ (and a few in val/), or all in ``split``; returns the mean file size
    in bytes."""
    rng = np.random.default_rng(seed)
    sizes = []
    only = split
    for i in range(n):
        split = only or ("val" if i % 10 == 9 else "train")
        d = root / split / f"n{i % classes:08d}"
        d.mkdir(parents=True, exist_ok=True)
        h, w = size
        low = rng.uniform(0, 255, (h // 16, w // 16, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(low).resize((w, h), Image.BICUBIC), dtype=np.float32)
        img += rng.normal(0, 12, img.shape)
        path = d / f"img{i:05d}.JPEG"
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes))


def loader_rate(ds, split, augment, workers, batch, repeats=2) -> float:
    """Images/s of a full pass, best of ``repeats`` after one untimed pass (imports, page cache).
    With workers, each pass starts its workers (non-persistent, as in training): that is counted."""
    best = 0.0
    for r in range(repeats + 1):
        n, t0 = 0, time.perf_counter()
        for x, y in ds.batches(split, batch, augment=augment, shuffle=augment, epoch_seed=r,
                               workers=workers):
            n += len(y)
        if r:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def per_image_ms(ds, k=40) -> dict:
    """Median milliseconds per image for decoding and for the App. A.1.2 transform."""
    dec, tra = [], []
    for i in range(min(k, len(ds.train_files))):
        t0 = time.perf_counter()
        img = D.imagenet.decode(os.path.join(ds.source, ds.train_files[i].decode()))
        t1 = time.perf_counter()
        D.preprocess(img, True, torch.Generator().manual_seed(i))
        tra.append(time.perf_counter() - t1)
        dec.append(t1 - t0)
    return {"decode_ms": 1e3 * float(np.median(dec)), "rescale_crop_flip_ms": 1e3 * float(np.median(tra))}


def train_rate(rf, batch, steps, warmup, num_classes=1000) -> dict:
    torch.manual_seed(0)
    device = torch.device("cpu")
    model = imagenet_scorer(rf, num_classes=num_classes)
    bf16, cl = use_amp(device), use_channels_last(device, model=model)
    mf = memory_format(device, cl)
    model = model.to(memory_format=mf).train()
    opt = torch.optim.Adam(model.parameters(), 3.3e-4)
    x = torch.rand(batch, 3, 224, 224).contiguous(memory_format=mf)
    y = torch.randint(0, num_classes, (batch,))
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with autocast(device):
            logits = model(x)
        loss = total_loss(heaviside(logits.float()), y, 0.25, 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    rate = steps * batch / (time.perf_counter() - t0)
    return {"rf": rf, "batch": batch, "steps": steps, "bf16": bf16, "channels_last": cl,
            "train_images_per_s": rate, "macs_per_image": conv_macs(model, (224, 224))}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--batch", type=int, default=32, help="loader batch size")
    p.add_argument("--rf", type=int, default=17)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--gpu-img-s", type=float, default=None,
                   help="measured GPU training images/s of the paper-scale run, if known")
    p.add_argument("--ref-img-s", type=float, default=2500.0,
                   help="assumed: a reference network's single-GPU training images/s (default: ResNet-50, "
                        "bf16/AMP, one A100-class GPU, order of NVIDIA's published DeepLearningExamples rates)")
    p.add_argument("--ref-gmacs", type=float, default=4.1, help="the reference network's GMACs per image (ResNet-50)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "imagenet_loader.json"))
    a = p.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        mean_bytes = write_images(root, a.images)
        gen_s = time.perf_counter() - t0
        ds = D.load_imagenet(root, progress=False)
        D.preprocess(D.imagenet.decode(os.path.join(ds.source, ds.train_files[0].decode())), True)   # imports
        loader = {
            "train_workers0_images_per_s": loader_rate(ds, "train", True, 0, a.batch),
            "test_workers0_images_per_s": loader_rate(ds, "test", False, 0, a.batch),
            "train_workers1_images_per_s": loader_rate(ds, "train", True, 1, a.batch),
            **per_image_ms(ds),
        }
    model = train_rate(a.rf, a.train_batch, a.steps, a.warmup)
    per_worker = loader["train_workers0_images_per_s"]
    gmacs = model["macs_per_image"] / 1e9
    if a.gpu_img_s:
        gpu_rate, how = a.gpu_img_s, "measured (--gpu-img-s)"
    else:
        gpu_rate = a.ref_img_s * a.ref_gmacs / gmacs
        how = (f"assumed, not measured: a GPU that trains a {a.ref_gmacs} GMAC network (ResNet-50) at "
               f"{a.ref_img_s:.0f} img/s trains RF {a.rf} ({gmacs:.2f} GMAC) at the same MACs/s; "
               "loader workers on the GPU machine as fast per core as this CPU")
    out = {
        "git": git_commit(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cpu": cpu_features(), "cpu_class": cpu_class(), "threads": torch.get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "images": {"n": a.images, "size_hw": [375, 500], "mean_bytes": mean_bytes, "written_s": gen_s},
        "loader": loader, "model": model,
        "ratios": {
            "loader_per_worker_over_model_train": per_worker / model["train_images_per_s"],
            "workers_per_cpu_training_thread": model["train_images_per_s"] / per_worker,
        },
        "gpu": {"train_images_per_s": gpu_rate, "how": how,
                "workers_needed": math.ceil(gpu_rate / per_worker),
                "workers_needed_with_25pct_headroom": math.ceil(1.25 * gpu_rate / per_worker)},
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
