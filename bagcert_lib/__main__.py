"""Command line: ``python -m bagcert_lib train|certify|export ...``.

    python -m bagcert_lib train --profile cpu --rf 7 --margin 0.5      # train (resumable) + certify
    python -m bagcert_lib train --profile cpu --estimate               # what it costs here, then stop
    torchrun --nproc_per_node=4 -m bagcert_lib train --profile paper --rf 7   # DDP, 4 GPUs
    python -m bagcert_lib certify cpu-rf7-m0.5-heaviside-s0-seed0 --patches 5 2x12
    python -m bagcert_lib export results/runs/<run>                    # checkpoint -> model.safetensors
    python -m bagcert_lib list --shipped                                # the runs that ship their model
    python -m bagcert_lib train --profile imagenet --rf 17 --data /data/imagenet   # App. A.1.2

A wrong argument or a missing or corrupt input prints one line on stderr (what was wrong, what
is allowed, where it looked) and exits with 2; ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import REPO_ROOT, TrainConfig, profile_config

#: Errors that mean "the user's input is wrong" (bad argument, missing or corrupt data or model).
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, RuntimeError, KeyError)


class Parser(argparse.ArgumentParser):
    def error(self, message):       # one line, not argparse's usage block
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        sys.exit(2)


def parse_patch(text: str):
    h, _, w = text.lower().partition("x")
    try:
        patch = (int(h), int(w or h))
    except ValueError:
        raise argparse.ArgumentTypeError(f"patch {text!r} is not N or HxW (e.g. 5 or 2x12)") from None
    if min(patch) < 1:
        raise argparse.ArgumentTypeError(f"patch {text!r} must be positive")
    return patch


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (true/false)")


def build_parser() -> Parser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p = Parser(prog="python -m bagcert_lib", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)
    t = sub.add_parser("train", parents=[common],
                       help="train one configuration (resumes its run directory), then certify")
    t.add_argument("--profile", default="auto", help="paper | gpu | cpu | cpu_long | scaling | imagenet | smoke | auto")
    t.add_argument("--out", default=str(REPO_ROOT / "results" / "runs"), help="parent of run directories")
    t.add_argument("--name", help="run directory name (default: derived from the config)")
    t.add_argument("--no-certify", action="store_true", help="skip the test-set certification")
    t.add_argument("--estimate", action="store_true", help="print what the run costs here and stop")
    t.add_argument("--stop-after", type=int, help="stop after this many epochs (rerun to resume)")
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("profile",):
            continue
        if str(f.type).startswith("bool"):
            t.add_argument(f"--{f.name.replace('_', '-')}", type=_bool, metavar="BOOL")
        else:
            conv = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            t.add_argument(f"--{f.name.replace('_', '-')}", type=conv)
    c = sub.add_parser("certify", parents=[common], help="certify a trained run on the test set")
    c.add_argument("run_dir", help="a run folder, or a run name under results/runs")
    c.add_argument("--patches", nargs="+", type=parse_patch, help="e.g. 5 2x12 (default: every figure's)")
    c.add_argument("--device")
    e = sub.add_parser("export", parents=[common],
                       help="write a run's model.safetensors (weights only) from its checkpoint.pt")
    e.add_argument("run_dirs", nargs="+")
    ls = sub.add_parser("list", parents=[common],
                        help="the committed runs: test-set accuracy at 5x5 and whether they ship weights")
    ls.add_argument("--shipped", action="store_true", help="only runs with model.safetensors")
    ls.add_argument("--results", help="parent of run directories (default: results/runs)")
    return p


def list_runs(results=None, shipped_only: bool = False) -> "pd.DataFrame":
    """One row per run: name, clean and certified (Condition 3.2; a DS run's own certificate)
    test accuracy against 5x5 patches from certification.csv (blank when not certified), and whether it ships its weights.
    ``epochs``: done / planned, marked "(training)" for an unfinished run, whose weights are its
    last epoch's, not the finished model, and "retraining k/n" for a run being trained again
    beside its old files (``sweep --retrain-unshipped``)."""
    import pandas as pd

    from .pretrained import WEIGHTS
    from .results import load_certification, load_runs
    from .sweep import epochs_done, retrain_dir

    runs = load_runs(results)
    if runs.empty:
        raise FileNotFoundError(f"no runs (config.yaml) under {results or 'results/runs'}")
    cert = load_certification(results).query("patch == '5x5' and condition in ('3.2', 'DS', 'CBN', 'Mask-BN')")
    cert = cert.set_index("run")[["clean_accuracy", "certified_accuracy"]]
    done = runs["epochs_done"].fillna(0).astype(int).astype(str) + "/" + runs["epochs"].astype(str)
    done = done.where(runs["finished"].fillna(False).astype(bool), done + " (training)")
    for i, (path, epochs) in enumerate(zip(runs["path"], runs["epochs"])):
        stage = retrain_dir(Path(path))
        if stage.is_dir():
            done.iloc[i] += f", retraining {epochs_done(stage)}/{epochs}"
    out = pd.DataFrame({
        "run": runs["run"],
        "epochs": done,
        "clean (%)": runs["run"].map(cert["clean_accuracy"] * 100).round(1),
        "certified 5x5 (%)": runs["run"].map(cert["certified_accuracy"] * 100).round(1),
        "weights": [(Path(p) / WEIGHTS).is_file() for p in runs["path"]],
    })
    return out[out["weights"]] if shipped_only else out


def run(args) -> None:
    if args.cmd == "train":
        from .distributed import env_rank
        from .runs import certify_run
        from .train import describe_cost, estimate_cost, train

        fields = set(TrainConfig.__dataclass_fields__) - {"profile"}
        cfg = profile_config(args.profile, **{k: getattr(args, k) for k in fields})
        if args.estimate:
            print(describe_cost(estimate_cost(cfg)))
            return
        run_dir = Path(args.out) / (args.name or cfg.run_name())
        if env_rank() == 0:
            print(f"run directory: {run_dir}")
        # under torchrun every process trains; rank 0 writes the one run directory
        out = train(cfg, run_dir, stop_after=args.stop_after)
        if env_rank() != 0:                  # rank 0 certifies and reports
            return
        if out["finished"] and not args.no_certify:
            df = certify_run(run_dir)
            print(df.query(f"patch == '{cfg.eval_patch}x{cfg.eval_patch}'").to_string(index=False))
        print(json.dumps(json.loads((run_dir / "metrics.json").read_text()), indent=2))
    elif args.cmd == "certify":
        from .runs import certify_run, resolve_run_dir

        run_dir = resolve_run_dir(args.run_dir)
        df = certify_run(run_dir, args.patches, args.device)
        print(df.to_string(index=False))
        print(f"saved in {run_dir / 'certification.csv'} "
              "(these shapes' rows replaced, the others kept)", file=sys.stderr)
    elif args.cmd == "list":
        df = list_runs(args.results, args.shipped)
        print(df.to_string(index=False, na_rep="") if len(df) else "no run ships its weights yet")
    else:
        from .pretrained import export_run
        from .runs import resolve_run_dir

        for d in args.run_dirs:
            print(f"wrote {export_run(resolve_run_dir(d, needs='checkpoint.pt'))}")


def plainly(run, args) -> None:
    """``run(args)``, with the user's errors (:data:`USER_ERRORS`) as one line on stderr and exit
    code 2, or their traceback with ``args.debug``. Every command line of the library uses it."""
    try:
        run(args)
    except USER_ERRORS as err:
        if args.debug:
            raise
        msg = " ".join(str(err).split()) if not isinstance(err, KeyError) else f"missing {err}"
        sys.stderr.write(f"error: {msg} (--debug shows the traceback)\n")
        sys.exit(2)


def main(argv=None):
    plainly(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
