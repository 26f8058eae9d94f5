"""PGD patch attack on Mask-DS, a trained DS column run's second certificate: no certified image
may be broken.

    python scripts/mask_ds_attack.py results/runs/cpu-ds-column4-theta0.3-w16-e12-seed0 \
        [--n 200] [--patch 5] [--steps 50] [--step-size 0.05] [--batch 25]

The first ``n`` images of the run's fixed class-balanced test subset, each attacked by
:func:`bagcert_lib.mask_ds.attack` (PGD on the patch pixels at the weakest window's patch
position, raising the masked evidence of that window's class over the true class's), the
robust-masking prediction checked at every iterate. Writes ``attack_mask_ds.json`` into the run
directory; exits non-zero if a certified image is broken.
"""
from __future__ import annotations

import argparse
import time

import torch

from bagcert_lib import mask_ds
from bagcert_lib.runs import _load, resolve_run_dir, save_attack_record
from bagcert_lib.runtime import device_name
from bagcert_lib.train import git_commit, test_batches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--patch", type=int, nargs="+", default=[5], help="h [w]")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=25, help="images attacked at once (32 ablations each)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run_dir = resolve_run_dir(a.run_dir)
    model, cfg, ds, device, _ = _load(run_dir, None, False, a.n)
    if cfg.method != "ds-column":
        raise SystemExit(f"{run_dir}: Mask-DS certifies DS column runs, this is {cfg.method}")
    patch = tuple(a.patch * 2)[:2] if len(a.patch) == 1 else tuple(a.patch)
    gen = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    sums = {"n": 0, "correct": 0, "certified": 0, "adv_correct": 0, "broken": 0, "certified_broken": 0}
    for x, y in test_batches(ds, cfg, device, batch_size=a.batch, model=model):    # images in [0, 1]
        res = mask_ds.attack(model, x, y, patch, size=cfg.ablation_size, steps=a.steps,
                             step_size=a.step_size, amp=cfg.amp, generator=gen)
        cert = res.certificate
        sums["n"] += len(y)
        sums["correct"] += int(res.clean_correct.sum())
        sums["certified"] += int(cert.certified.sum())
        sums["adv_correct"] += int(res.adv_correct.sum())
        sums["broken"] += int(res.flipped.sum())
        sums["certified_broken"] += int((res.flipped & cert.certified).sum())
    n = sums["n"]
    out = {"n": n, "patch": list(patch), "condition": mask_ds.CONDITION, "steps": a.steps,
           "step_size": a.step_size, "clean_accuracy": sums["correct"] / n,
           "certified_accuracy": sums["certified"] / n, "adversarial_accuracy": sums["adv_correct"] / n,
           "broken": sums["broken"], "certified_broken": sums["certified_broken"],
           "seconds": time.perf_counter() - t0, "device": device_name(device), "git": git_commit()}
    save_attack_record(run_dir, "attack_mask_ds.json", out)


if __name__ == "__main__":
    main()
