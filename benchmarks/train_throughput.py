"""Training images/s of the region scorer per width, precision and memory format.

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py --widths 16 24 32 48 64 96 --rf 7
    python benchmarks/train_throughput.py --widths 32 --formats channels_last contiguous
    python benchmarks/train_throughput.py --widths 32 --modes eager compiled   # torch.compile (config `compile`)

A bare training step (forward, margin loss, backward, Adam) on random CIFAR-sized batches of the
profile's batch size, timed over ``--steps`` steps after ``--warmup``; no data pipeline (the
trainer keeps ~0.9 of this, ``benchmarks/certification.py``). bf16 autocast is measured only
where this CPU has it natively (on AVX2 machines it is emulated, 9x slower, and no run uses it).
Every ratio in the output compares like with like: one width, one precision, two memory formats;
or one width, one format, two precisions; or one width, format and precision, eager against
``torch.compile`` (inductor; its compilation is done in the warm-up steps and not timed). The CPU's
model and flags are recorded with the numbers.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bagcert_lib.config import REPO_ROOT
from bagcert_lib.heads import heaviside
from bagcert_lib.loss import total_loss
from bagcert_lib.model import cifar_scorer
from bagcert_lib.runtime import cpu_class, cpu_features, cpu_supports_bf16, device_name
from bagcert_lib.train import git_commit


def images_per_s(width, rf, bf16, channels_last, batch, steps, warmup, device="cpu", compiled=False):
    torch.manual_seed(0)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    model = cifar_scorer(rf, width).to(device).to(memory_format=mf).train()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    if compiled:                       # as the trainer does (runtime.compiled): the module only
        torch._dynamo.reset()
        model = torch.compile(model)
    x = torch.rand(batch, 3, 32, 32, device=device).contiguous(memory_format=mf)
    y = torch.randint(0, 10, (batch,), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        with torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            logits = model(x)
        loss = total_loss(heaviside(logits.float()), y, 0.5, 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", type=int, nargs="+", default=[16, 24, 32, 48, 64, 96])
    p.add_argument("--rf", type=int, default=7)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"])
    p.add_argument("--precisions", nargs="+", default=None, help="bf16 fp32 (default: bf16 where native, and fp32)")
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compiled"],
                   help="eager and/or torch.compile (default: eager)")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "train_throughput.json"))
    a = p.parse_args(argv)
    precisions = a.precisions or (["bf16", "fp32"] if cpu_supports_bf16() else ["fp32"])
    rows = []
    for width in a.widths:
        for prec in precisions:
            for fmt in a.formats:
                for mode in a.modes:
                    ips = images_per_s(width, a.rf, prec == "bf16", fmt == "channels_last", a.batch,
                                       a.steps, a.warmup, compiled=mode == "compiled")
                    rows.append({"width": width, "precision": prec, "memory_format": fmt,
                                 "mode": mode, "images_per_s": ips})
                    print(f"width {width:3d}  {prec}  {fmt:13s}  {mode:8s}  {ips:7.1f} img/s", flush=True)
    ratios = {}
    for width in a.widths:
        for mode in a.modes:
            get = {(r["precision"], r["memory_format"]): r["images_per_s"] for r in rows
                   if r["width"] == width and r["mode"] == mode}
            tag = "" if a.modes == ["eager"] else f" {mode}"
            for prec in precisions:
                if ("channels_last" in a.formats and "contiguous" in a.formats):
                    ratios[f"w{width}{tag} {prec}: channels_last / contiguous"] = (
                        get[(prec, "channels_last")] / get[(prec, "contiguous")])
            if "bf16" in precisions and "fp32" in precisions:
                for fmt in a.formats:
                    ratios[f"w{width}{tag} {fmt}: bf16 / fp32"] = get[("bf16", fmt)] / get[("fp32", fmt)]
        if "eager" in a.modes and "compiled" in a.modes:
            get = {(r["precision"], r["memory_format"], r["mode"]): r["images_per_s"] for r in rows
                   if r["width"] == width}
            for prec in precisions:
                for fmt in a.formats:
                    ratios[f"w{width} {prec} {fmt}: compiled / eager"] = (
                        get[(prec, fmt, "compiled")] / get[(prec, fmt, "eager")])
    out = {"benchmark": "train_throughput", "rf": a.rf, "batch": a.batch, "steps": a.steps,
           "threads": torch.get_num_threads(), "device": device_name("cpu"),
           "cpu": cpu_features(), "cpu_class": cpu_class(), "torch": torch.__version__,
           "git": git_commit(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "rows": rows, "ratios": ratios}
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
