"""Seconds to certify ImageNet validation images, measured here and extrapolated to 50,000.

    OMP_NUM_THREADS=1 python benchmarks/imagenet_certify.py --images 200

The paper certifies the 50,000 ImageNet validation images in "roughly 7 minutes" (§4, one Tesla
V100). This measures the same pipeline as ``certify_run`` of an ImageNet run, on a small scale:

* ``--images`` generated JPEGs of ImageNet's typical 500x375 (``imagenet_loader.write_images``), in
  an ImageNet-layout folder's val/;
* streamed through the run's test loader (``train.test_batches``: torchvision decode, shorter side
  256, centre 224x224 crop, collate; DataLoader workers as the profile sets them, 0 on a CPU);
* the RF 17 region scorer of App. A.1.2 (``--rf``; 1,000 classes), **untrained** (random
  initialisation, seed 0): the time of a forward pass and of the certificate do not depend on
  the weights, the accuracies do, so none are reported;
* certified for 32x32 patches with Conditions 3.2 and 3.3 (``train.evaluate_batches``, as
  ``certify_run`` does), on ``--threads`` CPU threads (default one).

Seconds per image split into loading (decode + crop + collate: time spent waiting for the
loader), forward pass and certification, the CPU (``runtime.cpu_features``), the load average
(the machine may be busy: the numbers are then upper bounds), and the extrapolation to 50,000
images on this CPU. Writes results/benchmarks/imagenet_certify.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imagenet_loader import write_images  # noqa: E402

from bagcert_lib import data as D  # noqa: E402
from bagcert_lib.config import REPO_ROOT, profile_config  # noqa: E402
from bagcert_lib.model import conv_macs  # noqa: E402
from bagcert_lib.results import IMAGENET_VAL  # noqa: E402
from bagcert_lib.runs import figure_patches  # noqa: E402
from bagcert_lib.runtime import (cpu_class, cpu_features, device_name, memory_format, region_scores,  # noqa: E402
                                 use_amp, use_channels_last)
from bagcert_lib.train import build_model, evaluate_batches, git_commit, test_batches  # noqa: E402

PAPER_SECONDS = 420.0   # §4: "roughly 7 minutes" for the 50,000 validation images (one V100)


class TimedLoader:
    """Iterates ``batches`` and adds up the seconds spent waiting for each batch (loading)."""

    def __init__(self, batches):
        self.it, self.seconds = iter(batches), 0.0

    def __iter__(self):
        return self

    def __next__(self):
        t0 = time.perf_counter()
        try:
            return next(self.it)
        finally:
            self.seconds += time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=200, help="val images to certify")
    p.add_argument("--rf", type=int, default=17, choices=[17, 25, 29])
    p.add_argument("--batch", type=int, default=100, help="certification batch (certify_run streams 100)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classes", type=int, default=1000, help="output classes of the scorer (ImageNet: 1,000)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "imagenet_certify.json"))
    a = p.parse_args(argv)

    torch.set_num_threads(a.threads)
    device = torch.device("cpu")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        mean_bytes = write_images(root, a.images, split="val")
        write_images(root, 4, split="train", seed=1)            # the layout needs a train/ split
        written_s = time.perf_counter() - t0
        cfg = profile_config("imagenet", rf=a.rf, data=str(root), workers=0 if device.type == "cpu" else None)
        ds = D.load_imagenet(root, progress=False)
        assert len(ds.y_test) == a.images
        torch.manual_seed(0)
        model = build_model(cfg, num_classes=a.classes).to(device).eval()      # untrained: timing only
        cl = use_channels_last(device, cfg.channels_last, model)
        model = model.to(memory_format=memory_format(device, cl))
        # warm-up, untimed: the decoder's imports and the forward pass's first allocations
        D.preprocess(D.imagenet.decode(os.path.join(ds.source, ds.test_files[0].decode())), False)
        with torch.no_grad():
            region_scores(model, torch.rand(2, 3, 224, 224).contiguous(
                memory_format=memory_format(device, cl)), cfg.head, cfg.amp)
        loader = TimedLoader(test_batches(ds, cfg, device, a.batch, model=model))
        t0 = time.perf_counter()
        df = evaluate_batches(model, loader, cfg, device, patches=figure_patches("imagenet"))
        wall = time.perf_counter() - t0
    n = int(df.attrs["n"])
    seconds = {"loading": loader.seconds, "forward": float(df.attrs["forward_s"]),
               "certify": float(df.attrs["certify_s"]), "total": wall}
    seconds["other"] = wall - seconds["loading"] - seconds["forward"] - seconds["certify"]
    per_image = {k: v / n for k, v in seconds.items()}
    out = {
        "git": git_commit(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "device": device_name(device), "cpu": cpu_features(), "cpu_class": cpu_class(),
        "threads": torch.get_num_threads(), "workers": cfg.workers,
        "load_average_at_start": load_start, "load_average_at_end": os.getloadavg(),
        "images": {"n": n, "size_hw": [375, 500], "mean_bytes": mean_bytes, "written_s": written_s,
                   "generated": "smooth random fields with fine noise, JPEG quality 90 (imagenet_loader.py)"},
        "model": {"rf": a.rf, "num_classes": a.classes, "stride": model.stride,
                  "weights": "untrained (random initialisation, seed 0): timing only, no accuracies",
                  "bf16": use_amp(device, cfg.amp), "channels_last": cl,
                  "macs_per_image": conv_macs(model, (224, 224))},
        "patches": sorted(set(df.patch)), "conditions": sorted(set(df.condition)), "batch": a.batch,
        "seconds": seconds, "seconds_per_image": per_image,
        "extrapolated_50k_s": {k: v * IMAGENET_VAL for k, v in per_image.items()},
        "images_per_s": n / wall,
        "paper_seconds": PAPER_SECONDS,
        "over_paper": per_image["total"] * IMAGENET_VAL / PAPER_SECONDS,
        "note": (f"{n} images certified on this CPU ({a.threads} thread(s)) and scaled linearly to "
                 f"{IMAGENET_VAL:,}; the paper's {PAPER_SECONDS:.0f} s is one Tesla V100. A busy machine "
                 "(load average above the threads used) makes every number an upper bound."),
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(json.dumps(out, indent=2, default=float))
    return out


if __name__ == "__main__":
    main()
