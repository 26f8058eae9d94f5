"""PGD patch attack on a trained PatchCleanser run: no certified image may be broken
(:func:`bagcert_lib.runs.attack_patchcleanser`; the sweep runs it after certifying).

    python scripts/patchcleanser_attack.py results/runs/cpu-patchcleanser-w16-e12-k6-seed0 \
        [--n 100] [--patch 5] [--positions 2] [--steps 20] [--pairs]

Writes ``attack_patchcleanser.json`` into the run directory; exits non-zero if a certified image
is broken.
"""
from __future__ import annotations

import argparse

from bagcert_lib.runs import attack_patchcleanser


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--patch", type=int, nargs="+", default=[5], help="h [w]")
    p.add_argument("--positions", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-size", type=float, default=0.05)
    p.add_argument("--pairs", action="store_true", help="attack every mask pair (slower)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    attack_patchcleanser(a.run_dir, a.n, a.patch[0] if len(a.patch) == 1 else a.patch,
                         a.positions, a.steps, a.step_size, a.pairs, seed=a.seed)


if __name__ == "__main__":
    main()
