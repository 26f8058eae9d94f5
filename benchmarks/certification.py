"""BagCert against Derandomized Smoothing on one machine, in one run (Table 1).

    python benchmarks/certification.py [--n 1000] [--n-block 20] [--out results/benchmarks/certification.json]

Measures, on the same test images (the first of the fixed class-balanced test subset):

* per-image certification time for every patch shape of Figures 3 and 4: BagCert at each RF
  (cpu-profile width) and at the paper's width 768 for one batch; DS block and column
  smoothing. Each uses its trained run's weights when results/runs has them, else fresh ones;
  each row names its run and ``weights``;
* BagCert's certification time over its plain inference (forward pass) time;
* the summed-area certifier (``ScoreMaps``) against a direct loop over patch positions;
* training throughput: bf16 against fp32, and the trainer (data, augmentation, logging) against
  the bare forward + backward of the same model.

Ratios come from this one run; absolute times name the hardware. Stop other jobs first (the
numbers are only as quiet as the machine).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from bagcert_lib import data as data_mod
from bagcert_lib import smoothing
from bagcert_lib.certifier import ScoreMaps, _sync, certify_model, worst_case_direct
from bagcert_lib.config import REPO_ROOT, grids, profile_config
from bagcert_lib.heads import get_head
from bagcert_lib.loss import total_loss
from bagcert_lib.model import cifar_scorer, num_parameters
from bagcert_lib.runs import figure_patches
from bagcert_lib.runtime import (autocast, cpu_class, cpu_features, device_name, memory_format,
                                 region_scores, use_amp, use_channels_last)
from bagcert_lib.train import git_commit, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from certify_cost import model_for  # noqa: E402  (the run's weights, else fresh ones)


def bagcert_row(model, x, y, device, batch, patches, label, run):
    cl = use_channels_last(device, model=model)
    loader = data_mod.batches(x, y, batch, device=device, channels_last=cl)
    model = model.to(memory_format=memory_format(device, cl))
    certify_model(model, data_mod.batches(x[:batch], y[:batch], batch, device=device,
                                          channels_last=cl), patches, progress=False)   # warm-up
    t0 = time.perf_counter()
    df = certify_model(model, loader, patches, progress=False)
    wall = time.perf_counter() - t0
    n = df.attrs["n"]
    five = df.query("patch == '5x5' and condition == '3.2'").iloc[0]
    return {"method": "BagCert", "model": label, "run": run, "n": n,
            "parameters": num_parameters(model),
            "forward_s_per_image": df.attrs["forward_s"] / n,
            "certify_s_per_image": df.attrs["certify_s"] / n,
            "seconds_per_image": wall / n,
            "certify_over_forward": df.attrs["certify_s"] / df.attrs["forward_s"],
            "clean_accuracy": float(five.clean_accuracy),
            "certified_accuracy_5x5": float(five.certified_accuracy)}


def ds_row(model, x, y, device, kind, cfg, patches, run):
    df = smoothing.certify_model(model, data_mod.batches(x, y, 500, device=device), patches,
                                 kind=kind, size=cfg.ablation_size, theta=cfg.theta,
                                 device=device, progress=False)
    n = df.attrs["n"]
    five = df.query("patch == '5x5'").iloc[0]
    return {"method": f"DS ({kind})", "model": f"ResNet-18 width {cfg.width}, {kind} {cfg.ablation_size}, "
            f"theta {cfg.theta:g}", "run": run, "n": n, "parameters": num_parameters(model),
            "forward_s_per_image": df.attrs["forward_s"] / n,
            "certify_s_per_image": df.attrs["certify_s"] / n,
            "seconds_per_image": (df.attrs["forward_s"] + df.attrs["certify_s"]) / n,
            "certify_over_forward": None,
            "clean_accuracy": float(five.clean_accuracy),
            "certified_accuracy_5x5": float(five.certified_accuracy),
            "forward_passes_per_image": smoothing.num_ablations(kind, tuple(x.shape[-2:]))}


def summed_area_vs_loop(model, x, y, device, patch=(5, 5)):
    s = region_scores(model, x.to(device).contiguous(memory_format=memory_format(device, model=model)))
    y = y.to(device)
    t0 = time.perf_counter()
    fast = ScoreMaps(s, y).worst_case(patch, model.receptive_field, model.stride)[0]
    t1 = time.perf_counter()
    slow = worst_case_direct(s, y, patch, model.receptive_field, model.stride)
    t2 = time.perf_counter()
    if not torch.allclose(fast, slow):
        raise AssertionError("summed-area and direct certifier disagree")
    return {"n": len(y), "patch": list(patch), "summed_area_s": t1 - t0, "direct_loop_s": t2 - t1,
            "speedup": (t2 - t1) / (t1 - t0)}


def step_throughput(model, x, y, amp, steps, optimizer=True, device="cpu"):
    """Images/s of the bare step: forward (+ margin loss) + backward (+ Adam) on one fixed batch."""
    head = get_head("heaviside")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            _sync(device)
            t0 = time.perf_counter()
        with autocast(device, amp):
            logits = model(x)
        loss = total_loss(head(logits.float()), y, 0.5, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if optimizer:
            opt.step()
    _sync(device)
    return steps * len(y) / (time.perf_counter() - t0)


def training(device, width, steps, train_size):
    """Bare steps against the trainer, each ratio in one precision on both sides: bf16
    only where it is native (on an AVX2 CPU it is emulated and no run uses it); the trainer's own
    precision is what its ratio to the bare step compares with."""
    cfg = profile_config("cpu", rf=7, margin=0.5, width=width, device=str(device))
    mf = memory_format(device, model=cifar_scorer(7, width))   # the trainer's choice for it
    x = torch.rand(cfg.batch_size, 3, 32, 32, device=device).contiguous(memory_format=mf)
    y = torch.randint(0, 10, (cfg.batch_size,), device=device)
    trainer_prec = "bf16" if use_amp(device) else "fp32"
    out = {"width": width, "batch_size": cfg.batch_size, "steps": steps, "memory_format": str(mf),
           "trainer_precision": trainer_prec}
    for amp in ((True, False) if use_amp(device) else (False,)):
        torch.manual_seed(0)
        model = cifar_scorer(7, width).to(device).to(memory_format=mf)
        out[f"bare_fwd_bwd_{'bf16' if amp else 'fp32'}_images_per_s"] = step_throughput(
            model, x, y, amp, steps, optimizer=False, device=device)
        out[f"bare_step_{'bf16' if amp else 'fp32'}_images_per_s"] = step_throughput(
            model, x, y, amp, steps, optimizer=True, device=device)
    out["bf16_over_fp32"] = (out["bare_step_bf16_images_per_s"] / out["bare_step_fp32_images_per_s"]
                             if use_amp(device) else None)      # None: no native bf16 here
    with tempfile.TemporaryDirectory() as tmp:   # the trainer: real data, augmentation, logging
        tcfg = profile_config("cpu", rf=7, margin=0.5, width=width, epochs=1, train_size=train_size,
                              eval_size=100, device=str(device))
        h = train(tcfg, Path(tmp) / "run", progress=False)["history"].iloc[0]
    out["trainer_images_per_s"] = float(h.images_per_s)
    out["trainer_train_size"] = train_size
    out["bare_fwd_bwd_over_trainer"] = out[f"bare_fwd_bwd_{trainer_prec}_images_per_s"] / h.images_per_s
    out["bare_step_over_trainer"] = out[f"bare_step_{trainer_prec}_images_per_s"] / h.images_per_s
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1000, help="test images for BagCert and DS column")
    p.add_argument("--n-block", type=int, default=20, help="test images for DS block (1,024 passes each)")
    p.add_argument("--n-wide", type=int, default=16, help="images for BagCert at width 768 (one batch)")
    p.add_argument("--rfs", type=int, nargs="+", default=grids()["receptive_fields"])
    p.add_argument("--train-steps", type=int, default=30)
    p.add_argument("--train-size", type=int, default=9600, help="images of the one trainer epoch timed")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "certification.json"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    t_start = time.perf_counter()
    ds = data_mod.load_dataset("cifar10", progress=False)
    ds = data_mod.subset(ds, n_test=a.n, seed=0)
    x, y = ds.x_test, ds.y_test
    patches = figure_patches()
    result = {"git": git_commit(), "torch": torch.__version__, "device": device_name(device),
              "cpu": cpu_features(), "cpu_class": cpu_class(),
              "amp_bf16": use_amp(device), "dataset": ds.describe(), "patch_shapes": len(patches),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "rows": []}

    def log(row):
        result["rows"].append(row)
        print(f"{row['method']:12s} {row['model']:40s} n={row['n']:5d} "
              f"{row['seconds_per_image'] * 1e3:9.3f} ms/image", flush=True)

    for rf in a.rfs:
        cfg = profile_config(a.profile, rf=rf, margin=0.5)
        model, run, weights = model_for(cfg, device)
        log({**bagcert_row(model, x, y, device, 500, patches, f"RF {rf}, width {cfg.width}", run),
             "weights": weights})
        if rf == 7:
            result["summed_area_vs_loop"] = summed_area_vs_loop(model, x[:200], y[:200], device)
    torch.manual_seed(0)
    wide = cifar_scorer(7, 768).to(device).eval()
    log(bagcert_row(wide, x[:a.n_wide], y[:a.n_wide], device, a.n_wide, patches,
                    "RF 7, width 768 (untrained)", None))
    for kind, n in (("column", a.n), ("block", a.n_block)):
        cfg = profile_config(a.profile, method=f"ds-{kind}")
        model, run, weights = model_for(cfg, device)
        log({**ds_row(model, x[:n], y[:n], device, kind, cfg, patches, run), "weights": weights})
    result["training"] = training(device, profile_config(a.profile).width, a.train_steps, a.train_size)
    rows = {(r["method"], r["model"]): r for r in result["rows"]}
    head = next(r for r in result["rows"] if r["model"].startswith("RF 7, width") and "768" not in r["model"])
    result["ratios"] = {
        "bagcert_rf7_certify_over_forward": head["certify_over_forward"],
        "ds_block_over_bagcert_rf7_per_image": rows[next(k for k in rows if k[0] == "DS (block)")]["seconds_per_image"] / head["seconds_per_image"],
        "ds_column_over_bagcert_rf7_per_image": rows[next(k for k in rows if k[0] == "DS (column)")]["seconds_per_image"] / head["seconds_per_image"],
        "summed_area_speedup_over_loop": result["summed_area_vs_loop"]["speedup"],
        "bf16_over_fp32_training": result["training"]["bf16_over_fp32"],
        "bare_fwd_bwd_over_trainer": result["training"]["bare_fwd_bwd_over_trainer"],
    }
    result["wall_s"] = time.perf_counter() - t_start
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["ratios"], indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
