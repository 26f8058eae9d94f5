"""Command line: ``python -m bagcert_lib train|certify ...``.

    python -m bagcert_lib train --profile cpu --rf 7 --margin 0.5      # train (resumable) + certify
    python -m bagcert_lib certify results/runs/cpu-rf7-m0.5-heaviside-s0-seed0 --patches 5 2x12
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .config import REPO_ROOT, TrainConfig, grids, profile_config


def parse_patch(text: str):
    h, _, w = text.lower().partition("x")
    return (int(h), int(w or h))


def figure_patches() -> list:
    g = grids()
    return [(p, p) for p in g["square_patches"]] + [tuple(p) for p in g["aspect_ratio_patches"]]


def certify_run(run_dir, patches=None, device=None, progress=True, split="test"):
    """Certify a run's model on the full test split for ``patches`` (default: every figure's
    shapes) from one forward pass per batch; writes certification.csv into the run directory."""
    import torch

    from . import data as data_mod
    from .runtime import default_device
    from .train import evaluate, load_run

    device = torch.device(device) if device else default_device()
    model, cfg = load_run(run_dir, device)
    model = model.to(memory_format=torch.channels_last)
    ds = data_mod.load_dataset(cfg.dataset, cfg.data, progress=progress)
    x, y = (ds.x_test, ds.y_test) if split == "test" else (ds.x_train, ds.y_train)
    t0 = time.perf_counter()
    df = evaluate(model, x, y, cfg, device, patches=patches or figure_patches(), progress=progress)
    df["wall_s"] = time.perf_counter() - t0
    df["split"] = split
    df.to_csv(Path(run_dir) / "certification.csv", index=False)
    return df


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bagcert_lib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one configuration (resumes its run directory), then certify")
    t.add_argument("--profile", default="auto", help="paper | gpu | cpu | smoke | auto (default)")
    t.add_argument("--out", default=str(REPO_ROOT / "results" / "runs"), help="parent of run directories")
    t.add_argument("--name", help="run directory name (default: derived from the config)")
    t.add_argument("--no-certify", action="store_true", help="skip the test-set certification")
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("profile",):
            continue
        kind = {"bool | None": None, "bool": None}.get(str(f.type), "value")
        if kind is None:
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
            print(df.query("patch == '5x5'").to_string(index=False))
        print(json.dumps(json.loads((run_dir / "metrics.json").read_text()), indent=2))
    else:
        df = certify_run(args.run_dir, args.patches, args.device)
        print(df.to_string(index=False))


if __name__ == "__main__":
    main()
