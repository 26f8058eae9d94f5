"""Command line: ``python -m bagcert_lib train|certify ...``.

    python -m bagcert_lib train --profile cpu --rf 7 --margin 0.5      # train (resumable) + certify
    python -m bagcert_lib certify results/runs/cpu-rf7-m0.5-heaviside-s0-seed0 --patches 5 2x12
    python -m bagcert_lib train --profile imagenet --rf 17 --data /data/imagenet   # App. A.1.2
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .config import REPO_ROOT, TrainConfig, profile_config
from .runs import certify_run


def parse_patch(text: str):
    h, _, w = text.lower().partition("x")
    return (int(h), int(w or h))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bagcert_lib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one configuration (resumes its run directory), then certify")
    t.add_argument("--profile", default="auto", help="paper | gpu | cpu | imagenet | smoke | auto (default)")
    t.add_argument("--out", default=str(REPO_ROOT / "results" / "runs"), help="parent of run directories")
    t.add_argument("--name", help="run directory name (default: derived from the config)")
    t.add_argument("--no-certify", action="store_true", help="skip the test-set certification")
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("profile",):
            continue
        if str(f.type).startswith("bool"):
            t.add_argument(f"--{f.name.replace('_', '-')}", type=lambda s: s.lower() in ("1", "true", "yes"),
                           metavar="BOOL")
        else:
            conv = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            t.add_argument(f"--{f.name.replace('_', '-')}", type=conv)
    c = sub.add_parser("certify", help="certify a trained run on the test set")
    c.add_argument("run_dir")
    c.add_argument("--patches", nargs="+", type=parse_patch, help="e.g. 5 2x12 (default: every figure's)")
    c.add_argument("--device")
    args = p.parse_args(argv)

    if args.cmd == "train":
        from .train import train

        fields = set(TrainConfig.__dataclass_fields__) - {"profile"}
        cfg = profile_config(args.profile, **{k: getattr(args, k) for k in fields})
        run_dir = Path(args.out) / (args.name or cfg.run_name())
        print(f"run directory: {run_dir}")
        out = train(cfg, run_dir)
        if out["finished"] and not args.no_certify:
            df = certify_run(run_dir)
            print(df.query(f"patch == '{cfg.eval_patch}x{cfg.eval_patch}'").to_string(index=False))
        print(json.dumps(json.loads((run_dir / "metrics.json").read_text()), indent=2))
    else:
        df = certify_run(args.run_dir, args.patches, args.device)
        print(df.to_string(index=False))


if __name__ == "__main__":
    main()
