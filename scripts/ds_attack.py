"""PGD patch attack on Derandomized Smoothing's own certificate, a trained DS block or column
run: no certified image may be broken, and no class's votes may change by more than Δ
(:func:`bagcert_lib.runs.attack_ds`; the sweep runs it after certifying).

    python scripts/ds_attack.py results/runs/cpu-ds-column4-theta0.3-w16-e12-seed0 \
        [--n 1000] [--patch 5] [--steps 50] [--step-size 0.05] [--batch N]

Writes ``attack_ds.json`` into the run directory; exits non-zero if a certified image is broken.
"""
from __future__ import annotations

import argparse

from bagcert_lib.runs import attack_ds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--patch", type=int, nargs="+", default=[5], help="h [w]")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--batch", type=int, default=None,
                   help="images attacked at once (default: about 200 ablated images a pass)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    attack_ds(a.run_dir, a.n, a.patch[0] if len(a.patch) == 1 else a.patch,
              a.steps, a.step_size, a.batch, seed=a.seed)


if __name__ == "__main__":
    main()
