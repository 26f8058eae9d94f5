"""Images per forward pass for the defenses that make many passes per image.

    python benchmarks/forward_batch.py [--budgets 1 2] [--sizes 16 32 64 128 256 512 1024] \
        [--out results/benchmarks/forward_batch.json] [--note "..."]

PatchCleanser (hundreds of masked images per image and shape), Derandomized Smoothing (1,024 block
or 32 column ablations per image) and Mask-DS spend nearly all their certification time in the
forward passes of one ResNet-18, whose batch size the library picks
(:func:`bagcert_lib.runtime.forward_batch`). For the ResNet of every equal-compute budget (the
trained run's weights where results/runs has them, else fresh ones), this times the model on
random inputs at each batch size, in the precision and memory format certification uses, and
reports milliseconds per image; and checks that the batch size does not change the model's
logits (each batch size's logits on the same 1,024 inputs against the largest size's: the largest
absolute difference, and whether every argmax agrees), so that choosing it changes the speed and
nothing else. Ratios hold on one machine; the JSON names it (CPU model and flags, threads), the
date and the commit. Stop other jobs first.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_cost import model_for  # noqa: E402  (the run's weights, else fresh ones)

from bagcert_lib.config import REPO_ROOT, grids, profile_config  # noqa: E402
from bagcert_lib.runtime import (autocast, configure_backends, cpu_class, cpu_features,  # noqa: E402
                                 device_name, forward_batch, memory_format)
from bagcert_lib.train import git_commit  # noqa: E402

#: The many-pass defenses' base models, and the inputs each sees (DS: the 6-channel ablation).
MODELS = (("PatchCleanser", "patchcleanser", 3), ("DS", "ds-block", 6))


@torch.no_grad()
def time_batch(model, x: torch.Tensor, seconds: float) -> float:
    """Seconds per image of ``model`` on batches of ``x``'s size, over at least ``seconds``."""
    model(x)                                                        # warm up (allocators, kernels)
    n, t0 = 0, time.perf_counter()
    while True:
        model(x).float().argmax(1)
        n += len(x)
        if time.perf_counter() - t0 >= seconds:
            return (time.perf_counter() - t0) / n


@torch.no_grad()
def logits(model, x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + size]).float() for i in range(0, len(x), size)])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256, 512, 1024])
    p.add_argument("--seconds", type=float, default=2.0, help="timed per batch size and model")
    p.add_argument("--note", help="what else ran on the machine, or anything a reader of the numbers needs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "forward_batch.json"))
    a = p.parse_args(argv)
    configure_backends()
    device = torch.device(a.device)
    budgets = grids()["equal_compute"]["budgets"]
    ds_extra = {k: v for m in grids()["equal_compute"]["resnet_methods"] if m["method"] == "ds-block"
                for k, v in m.items() if k != "method"}
    sizes = sorted(set(a.sizes))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for budget in a.budgets:
        b = budgets[budget - 1]
        resnet = {k: v for k, v in b["resnet"].items() if k != "profile"}
        profile = b["resnet"].get("profile", b["profile"])
        for label, method, channels in MODELS:
            over = {"method": method, **resnet, **(ds_extra if method.startswith("ds") else {})}
            cfg = profile_config(profile, **over)
            model, run, weights = model_for(cfg, device)
            model = model.to(memory_format=memory_format(device, cfg.channels_last, model))
            x = torch.rand(max(sizes), channels, 32, 32, generator=gen).to(device)
            with autocast(device, cfg.amp):
                ref = logits(model, x, max(sizes))
                per = {}
                for size in sizes:
                    out = logits(model, x, size)
                    per[size] = {"ms_per_image": 1e3 * time_batch(model, x[:size], a.seconds),
                                 "max_abs_logit_difference": float((out - ref).abs().max()),
                                 "argmax_agrees": bool((out.argmax(1) == ref.argmax(1)).all())}
            best = min(per, key=lambda s: per[s]["ms_per_image"])
            chosen = forward_batch(x)
            rows.append({"model": label, "method": method, "budget": budget, "width": cfg.width,
                         "run": run, "weights": weights, "sizes": {str(s): v for s, v in per.items()},
                         "fastest": best, "library_batch": chosen,
                         "library_ms_per_image": per.get(chosen, {}).get("ms_per_image"),
                         "identical": all(v["max_abs_logit_difference"] == 0 for v in per.values())})
            r = rows[-1]
            print(f"{label} (budget {budget}, width {cfg.width}, {weights}): "
                  + ", ".join(f"{s}: {v['ms_per_image']:.3f}" for s, v in per.items())
                  + f" ms/image; fastest {best}; logits identical across sizes: {r['identical']}",
                  flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "git": git_commit(),
           "torch": torch.__version__, "device": device_name(device), "cpu": cpu_features(),
           "cpu_class": cpu_class(), "threads": torch.get_num_threads(), "sizes": sizes,
           "models": rows, **({"note": a.note} if a.note else {})}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
