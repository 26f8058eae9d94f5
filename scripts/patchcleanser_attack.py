"""PGD patch attack on a trained PatchCleanser run: no certified image may be broken.

    python scripts/patchcleanser_attack.py results/runs/cpu-patchcleanser-w16-e12-k6-seed0 \
        [--n 40] [--patch 5] [--positions 3] [--steps 20] [--pairs]

The first ``n`` images of the run's fixed class-balanced test subset; per image ``positions``
patch positions drawn uniformly (seeded), each attacked by
:func:`bagcert_lib.patchcleanser.patch_attack` (PGD on the patch pixels against the first
round's masked images, or with ``--pairs`` every mask pair's), the double-masking prediction
checked at every iterate. Writes ``attack_patchcleanser.json`` into the run directory.
"""
from __future__ import annotations

import argparse
import time

import torch

from bagcert_lib import patchcleanser as pc
from bagcert_lib.runs import _load, resolve_run_dir, save_attack_record
from bagcert_lib.runtime import device_name
from bagcert_lib.train import git_commit, test_batches


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--patch", type=int, nargs="+", default=[5], help="h [w]")
    p.add_argument("--positions", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--pairs", action="store_true", help="attack every mask pair (slower)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run_dir = resolve_run_dir(a.run_dir)
    model, cfg, ds, device, _ = _load(run_dir, None, False, a.n)
    x, y = next(iter(test_batches(ds, cfg, device, batch_size=a.n, model=model)))   # images in [0, 1]
    patch = tuple(a.patch * 2)[:2] if len(a.patch) == 1 else tuple(a.patch)
    ms = pc.mask_set(patch, tuple(x.shape[-2:]), cfg.num_masks, cfg.mask_stride)
    t0 = time.perf_counter()
    clean = pc.double_masking(model, x, ms, y, amp=cfg.amp)
    gen = torch.Generator().manual_seed(a.seed)
    H, W = x.shape[-2:]
    broken = torch.zeros(len(y), dtype=torch.bool, device=device)
    for _ in range(a.positions):
        row = torch.randint(H - patch[0] + 1, (len(y),), generator=gen).to(device)
        col = torch.randint(W - patch[1] + 1, (len(y),), generator=gen).to(device)
        out = pc.patch_attack(model, x, y, ms, row, col, steps=a.steps, step_size=a.step_size,
                              amp=cfg.amp, pairs=a.pairs, generator=gen)
        broken |= out["broken"]
    correct = clean.prediction == y
    res = {"n": len(y), "patch": list(patch), "masks": len(ms), "positions": a.positions,
           "steps": a.steps, "step_size": a.step_size, "pairs": a.pairs,
           "clean_accuracy": correct.float().mean().item(),
           "certified_accuracy": clean.certified.float().mean().item(),
           "adversarial_accuracy": (correct & ~broken).float().mean().item(),
           "broken": int((correct & broken).sum()),
           "certified_broken": int((clean.certified & broken).sum()),
           "seconds": time.perf_counter() - t0, "device": device_name(device), "git": git_commit()}
    save_attack_record(run_dir, "attack_patchcleanser.json", res)


if __name__ == "__main__":
    main()
