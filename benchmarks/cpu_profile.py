"""Measure the `cpu` profile: seconds per training epoch (the trainer itself) and the time to
certify the 10,000 test images for every Figure 3/4 patch shape (forward pass vs certification).

    python benchmarks/cpu_profile.py [--rfs 7 13] [--out results/benchmarks/cpu_profile.json]

One epoch per RF with the real data pipeline; numbers land in a JSON file with provenance.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from bagcert_lib.runs import certify_run
from bagcert_lib.config import REPO_ROOT, profile_config
from bagcert_lib.runtime import cpu_class, cpu_features, device_name
from bagcert_lib.train import git_commit, train

def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--rfs", type=int, nargs="+", default=[7, 13])
    p.add_argument("--profile", default="cpu")
    p.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "cpu_profile.json"))
    args = p.parse_args(argv)

    result = {"profile": args.profile, "git": git_commit(), "torch": torch.__version__,
              "device": device_name("cpu"), "cpu": cpu_features(), "cpu_class": cpu_class(), "epochs": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    with tempfile.TemporaryDirectory() as tmp:
        for rf in args.rfs:
            cfg = profile_config(args.profile, rf=rf, margin=0.5)
            run_dir = Path(tmp) / f"rf{rf}"
            h = train(cfg, run_dir, progress=False, stop_after=1)["history"].iloc[0]
            prov = json.loads((run_dir / "provenance.json").read_text())
            result["dataset"] = prov["dataset"]
            result["epochs"][rf] = {"width": cfg.width, "n_train": prov["n_train"],
                                    "train_s": h.train_s, "epoch_s": h.epoch_s,
                                    "eval_s": h.epoch_s - h.train_s, "images_per_s": h.images_per_s}
            print(f"RF {rf}: {h.train_s:.1f} s/epoch ({h.images_per_s:.0f} img/s)", flush=True)
            if rf == args.rfs[0]:
                df = certify_run(run_dir, progress=False)
                result["certify_test_set"] = {
                    "rf": rf, "n": int(df.n.iloc[0]), "patch_shapes": int(df.patch.nunique()),
                    "forward_s": df.attrs["forward_s"], "certify_s": df.attrs["certify_s"],
                    "certify_5x5_s": float(df.query("patch == '5x5'").certify_s.iloc[0]),
                    "wall_s": float(df.wall_s.iloc[0])}
                print(json.dumps(result["certify_test_set"]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
