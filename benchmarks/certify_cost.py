"""What certifying one image costs, for every defense, on one machine in one run.

    python benchmarks/certify_cost.py [--n 500] [--n-block 10] [--n-cleanser 50] [--out results/benchmarks/certify_cost.json]
    python benchmarks/certify_cost.py --budget 2        # the second budget's models: certify_cost-budget2.json
    python benchmarks/certify_cost.py --defenses PatchCleanser "DS block" --compile \
        --out results/benchmarks/certify_compile.json      # torch.compile against eager

Every defense is certified through its own ``Method.evaluate`` (the loop the runs use) for every
patch shape of Figures 3 and 4 at once, on the first images of the fixed class-balanced test
subset, the models of one budget of the equal-compute grid (``--budget``; the first: the cpu
grid's training FLOPs):
BagCert (Conditions 3.2/3.3), Derandomized Smoothing with block and column ablations,
Mask-DS (PatchGuard's masking on the DS column model: the same forward passes, timed once),
Clipped BagNet, PatchGuard's Mask-BN and PatchCleanser. Each uses
the trained run when results/runs has its weights, else a freshly initialised model
of the same architecture (the cost barely depends on the weights; BagCert's and Mask-BN's
pruning a little), which the JSON says. DS block makes 1,024 forward passes per image and is
timed on ``--n-block`` images, PatchCleanser on ``--n-cleanser``.

Reported per image: the forward pass(es), the certification of all shapes, and the wall time;
and per 10,000 images (the CIFAR-10 test set). ``--compile`` also certifies the same images
through ``torch.compile(model)`` (what ``certify --compile`` does), once to compile (timed apart)
and once more timed, and reports how far the compiled model's accuracies lie from the eager
ones (fused kernels round differently, so an image near a decision can change). Ratios hold on one
machine; the JSON names it (CPU model and flags, threads), the date and the commit. Stop other
jobs first.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bagcert_lib import data as data_mod
from bagcert_lib import patchcleanser
from bagcert_lib.certifier import patch_label
from bagcert_lib.config import METHODS, REPO_ROOT, grids, profile_config
from bagcert_lib.methods import method_for
from bagcert_lib.model import num_parameters
from bagcert_lib.runs import figure_patches, results_dir
from bagcert_lib.runtime import (compiled, configure_backends, cpu_class, cpu_features, device_name,
                                 forward_batch, memory_format, use_channels_last)
from bagcert_lib.pretrained import load_run
from bagcert_lib.train import build_model, git_commit

#: The equal-compute grid's budgets (_config.yml ``grids.equal_compute``), the cheaper first.
BUDGETS = grids()["equal_compute"]["budgets"]


def defenses(budget: int = 1) -> list[tuple[str, str, dict, str]]:
    """(label, profile, TrainConfig overrides, the certificate's condition) of every defense at
    ``budget`` (1-based), in the page's order: BagCert, CBN and Mask-BN at the budget's profile
    and sizes, DS and PatchCleanser at its ResNet-18's. DS column and Mask-DS are two
    certificates of one model from one set of forward passes (``Method.evaluate`` computes
    both), so they share one timing."""
    b = BUDGETS[budget - 1]
    scorer = {k: v for k, v in b.items() if k not in ("profile", "flops", "resnet")}
    resnet = {k: v for k, v in b["resnet"].items() if k != "profile"}
    rp = b["resnet"].get("profile", b["profile"])
    ds = {k: v for m in grids()["equal_compute"]["resnet_methods"] if m["method"] == "ds-block"
          for k, v in m.items() if k != "method"}
    return [
        ("BagCert", b["profile"], {"rf": 7, "margin": 0.5, **scorer}, "3.2"),
        ("DS block", rp, {"method": "ds-block", **ds, **resnet}, "DS"),
        ("DS column", rp, {"method": "ds-column", **ds, **resnet}, "DS"),
        ("Mask-DS", rp, {"method": "ds-column", **ds, **resnet}, "Mask-DS"),
        ("CBN", b["profile"], {"rf": 7, "margin": 0.5, "method": "cbn", **scorer}, "CBN"),
        ("Mask-BN", b["profile"], {"rf": 7, "margin": 0.5, "method": "mask-bn", **scorer}, "Mask-BN"),
        ("PatchCleanser", rp, {"method": "patchcleanser", **resnet}, "PC"),
    ]


DEFENSES = defenses(1)


def model_for(cfg, device):
    """The run's model when its weights are in results/runs (and how far it trained), else a
    fresh one: (model, run name or None, what the weights are)."""
    run = results_dir() / cfg.run_name()
    if (run / "model.safetensors").is_file() or (run / "checkpoint.pt").is_file():
        model, _ = load_run(run, device)
        m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        what = "trained" if m.get("finished") else f"partly trained ({m.get('epoch', 0)} of {cfg.epochs} epochs)"
        return model.eval(), run.name, what
    torch.manual_seed(0)
    return build_model(cfg).to(device).eval(), None, "fresh (no run with weights yet)"


def images_per_pass(cfg, x, device) -> int | None:
    """Masked or ablated images per forward pass of the ResNet defenses (``runtime.forward_batch``,
    as their certificates call it); None for the region scorers (one pass per image batch)."""
    if cfg.method not in ("ds-block", "ds-column", "patchcleanser"):
        return None
    like = torch.empty(1, *x.shape[1:], device=device)
    if cfg.method == "patchcleanser":
        return forward_batch(like, None, accelerator=patchcleanser.GPU_BATCH)
    return forward_batch(like, None)


def measure(cfg, ds, n, device, patches, compile=False) -> tuple[dict, "pd.DataFrame"]:
    """Time ``Method.evaluate`` of ``cfg``'s model on the first ``n`` test images for every
    shape: (the timing, the certification table); with ``compile`` also through torch.compile."""
    model, run, weights = model_for(cfg, device)
    cl = use_channels_last(device, cfg.channels_last, model)
    model = model.to(memory_format=memory_format(device, cl))
    method = method_for(cfg)
    x, y = ds.x_test[:n], ds.y_test[:n]

    def certify(net):
        t0 = time.perf_counter()
        df = method.evaluate(net, data_mod.batches(x, y, 250, device=device, channels_last=cl),
                             patches, cfg, device)
        return df, time.perf_counter() - t0

    warm = data_mod.batches(x[:2], y[:2], 2, device=device, channels_last=cl)
    method.evaluate(model, warm, patches[:1], cfg, device)                  # allocations, kernels
    df, wall = certify(model)
    more = {}
    if compile:
        net = compiled(model, True)
        _, first_wall = certify(net)                                        # compiles as it goes
        again, again_wall = certify(net)
        acc = ["clean_accuracy", "certified_accuracy"]
        diff = (again[acc] - df[acc]).abs().to_numpy()
        more = {"compiled_seconds_per_image": again_wall / n,
                "compile_s": first_wall - again_wall, "eager_over_compiled": wall / again_wall,
                "compiled_rows_differing": int((diff > 0).any(axis=1).sum()), "rows": len(df),
                "compiled_max_accuracy_difference": float(diff.max())}
    return {"method": cfg.method, "run": run, "weights": weights,
            "width": cfg.width, "rf": cfg.rf if cfg.method in ("bagcert", "cbn", "mask-bn") else None,
            "parameters": num_parameters(model), "n": int(df.attrs["n"]),
            "images_per_pass": images_per_pass(cfg, x, device),
            "patch_shapes": int(df.patch.nunique()),
            "forward_s_per_image": df.attrs["forward_s"] / n,
            "certify_s_per_image": df.attrs["certify_s"] / n,
            "seconds_per_image": wall / n, "seconds_per_10k_images": wall / n * 10_000, **more}, df


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=500, help="test images per defense")
    p.add_argument("--n-block", type=int, default=10, help="test images for DS block (1,024 passes each)")
    p.add_argument("--n-cleanser", type=int, default=50,
                   help="test images for PatchCleanser (up to several hundred passes each per shape)")
    p.add_argument("--defenses", nargs="+", metavar="LABEL", choices=[d[0] for d in DEFENSES],
                   help="time only these (default: every defense)")
    p.add_argument("--budget", type=int, default=1, choices=range(1, len(BUDGETS) + 1),
                   help="the equal-compute budget whose models are timed (default 1, the cpu grid's "
                   "FLOPs; its JSON is certify_cost.json, budget N's certify_cost-budgetN.json)")
    p.add_argument("--compile", action="store_true",
                   help="also certify through torch.compile and report eager / compiled")
    p.add_argument("--note", help="what else ran on the machine, or anything a reader of the numbers needs")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out")
    a = p.parse_args(argv)
    a.out = a.out or str(REPO_ROOT / "results" / "benchmarks" /
                         ("certify_cost.json" if a.budget == 1 else f"certify_cost-budget{a.budget}.json"))
    configure_backends()
    device = torch.device(a.device)
    ds = data_mod.subset(data_mod.load_dataset("cifar10", progress=False),
                         n_test=max(a.n, a.n_block, a.n_cleanser), seed=0)
    patches = figure_patches()
    rows, missing, timed = [], [], {}
    for label, profile, over, condition in defenses(a.budget):
        if a.defenses and label not in a.defenses:
            continue
        method = over.get("method", "bagcert")
        if method not in METHODS:
            missing.append(label)
            print(f"{label}: not in this tree (method {method!r}); skipped")
            continue
        cfg = profile_config(profile, **over)
        n = {"ds-block": a.n_block, "patchcleanser": a.n_cleanser}.get(method, a.n)
        key = (profile, *sorted(over.items()))
        if key not in timed:
            timed[key] = measure(cfg, ds, n, device, patches, a.compile)
        timing, df = timed[key]
        five = df[(df.patch == "5x5") & (df.condition == condition)].iloc[0]
        rows.append({"defense": label, "condition": condition, **timing,
                     "clean_accuracy_5x5": float(five.clean_accuracy),
                     "certified_accuracy_5x5": float(five.certified_accuracy)})
        r = rows[-1]
        print(f"{label}: {r['seconds_per_image'] * 1e3:.2f} ms/image ({r['weights']}), "
              f"{r['seconds_per_10k_images']:.0f} s per 10,000 images"
              + (f"; compiled {r['eager_over_compiled']:.2f}x faster (compiling took {r['compile_s']:.0f} s), "
                 f"{r['compiled_rows_differing']} of {r['rows']} rows differ, by at most "
                 f"{100 * r['compiled_max_accuracy_difference']:.2f} points" if a.compile else ""), flush=True)
    out = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "git": git_commit(),
           "torch": torch.__version__, "device": device_name(device), "cpu": cpu_features(),
           "cpu_class": cpu_class(), "threads": torch.get_num_threads(),
           "budget": a.budget, "flops": float(BUDGETS[a.budget - 1]["flops"]),
           "patch_shapes": [patch_label(p) for p in patches], "defenses": rows, "missing": missing,
           **({"note": a.note} if a.note else {})}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
