"""Command line: ``python -m bagcert_lib train|certify|attack|export|list ...``.

    python -m bagcert_lib train --profile cpu --rf 7 --margin 0.5      # train (resumable) + certify
    python -m bagcert_lib train --profile cpu --estimate               # what it costs here, then stop
    torchrun --nproc_per_node=4 -m bagcert_lib train --profile paper --rf 7   # DDP, 4 GPUs
    python -m bagcert_lib certify cpu-rf7-m0.5-heaviside-s0-seed0 --patches 5 24x1   # 5×5, 24 wide × 1 high
    python -m bagcert_lib certify cpu-patchcleanser-w32-e31-k6-seed0 --join   # help a long certification
    python -m bagcert_lib attack cpu-ds-column4-theta0.3-w16-e12-seed0 --n 1000     # PGD; none certified broken
    python -m bagcert_lib export results/runs/<run>                    # checkpoint → model.safetensors
    python -m bagcert_lib list --shipped                                # the runs that ship their model
    python -m bagcert_lib train --profile imagenet --rf 17 --data /data/imagenet   # App. A.1.2

A wrong argument or a missing or corrupt input prints one line on stderr (what was wrong, what
is allowed, where it looked) and exits with 2; ``--debug`` shows the traceback instead. Training
into a finished run leaves it as it is (``--retrain`` trains it again, deleting its files); a
run folder another process is writing is refused, naming that process.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import yaml

from .config import REPO_ROOT, TrainConfig, parse_test_size, profile_config

#: Errors that mean "the user's input is wrong" (bad argument, missing, unreadable or corrupt
#: data, model or run file, a run folder another process is writing, a diverged training).
USER_ERRORS = (ValueError, OSError, RuntimeError, KeyError, yaml.YAMLError, FloatingPointError)


class Parser(argparse.ArgumentParser):
    def error(self, message):       # one line, not argparse's usage block
        sys.stderr.write(f"error: {message} (see: {self.prog} --help)\n")
        sys.exit(2)


def parse_patch(text: str) -> tuple[int, int]:
    """A patch in the paper's notation, width × height: ``5`` is 5 × 5, ``24x1`` is 24 wide and
    1 high. Returns (h, w), the library's order. Anything else (``5x``, ``x5``, ``5x5x5``,
    ``0x3``) is refused; a patch larger than the image is refused where the image is known."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[x×]\s*(\d+)\s*)?", text.lower())
    if not m:
        raise argparse.ArgumentTypeError(
            f"patch {text!r} is not N or WxH (width × height, e.g. 5 for 5×5 or 24x1 for 24 wide, 1 high)")
    w = int(m.group(1))
    h = int(m.group(2)) if m.group(2) is not None else w
    if min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"patch {text!r} must be positive (width and height >= 1)")
    return (h, w)


def _test_size(text: str) -> int | str:
    try:
        value = parse_test_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return "all" if value is None else value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give a finite number")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give a positive integer")
    return value


def _nonnegative(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give a number >= 0")
    return value


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
    t.add_argument("--stop-after", type=_positive_int, help="stop after this many epochs (rerun to resume)")
    t.add_argument("--retrain", action="store_true",
                   help="train a finished run again from scratch, deleting its files (else it is left as it is)")
    for f in TrainConfig.__dataclass_fields__.values():
        if f.name in ("profile",):
            continue
        if str(f.type).startswith("bool"):
            t.add_argument(f"--{f.name.replace('_', '-')}", type=_bool, metavar="BOOL")
        else:
            conv = {"int": int, "float": _finite, "int | None": int,
                    "float | None": _finite}.get(str(f.type), str)
            t.add_argument(f"--{f.name.replace('_', '-')}", type=conv)
    c = sub.add_parser("certify", parents=[common], help="certify a trained run on the test set")
    c.add_argument("run_dir", help="a run folder, or a run name under results/runs")
    c.add_argument("--patches", nargs="+", type=parse_patch,
                   help="width × height, e.g. 5 (5×5) 24x1 (24 wide, 1 high); default: every figure's")
    c.add_argument("--device")
    c.add_argument("--test-size", metavar="N|all", type=_test_size,
                   help="test images to certify (default: the run's test_size; all: the whole split)")
    c.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model: numerically a different model (a few images near a "
                   "decision may certify differently; rows say compiled); whether it is faster depends "
                   "on the defense and the device (the book's benchmarks page)")
    c.add_argument("--chunk", type=_positive_int, metavar="N",
                   help="save the certification every N test images (default 500): a killed "
                   "certification started again resumes at the first chunk not saved")
    c.add_argument("--join", action="store_true",
                   help="certify, beside the process certifying this run, chunks nobody holds yet "
                   "(its shapes, images and chunk size; any number of processes or machines may join); "
                   "that process combines them")
    c.add_argument("--wait", type=_nonnegative, metavar="SECONDS", default=0.0,
                   help="with --join: wait this long for a certification to start (default 0)")
    a = sub.add_parser("attack", parents=[common],
                       help="PGD patch attacks on a certified run: App. A.2's (BagCert, CBN, Mask-BN) or "
                       "those on its defense's own certificate (DS, Mask-DS, PatchCleanser); exits 2 "
                       "if a certified image is broken")
    a.add_argument("run_dir", help="a run folder, or a run name under results/runs")
    a.add_argument("--n", metavar="N|all", type=_test_size,
                   help="images of the run's fixed class-balanced test subset (default 1000; PatchCleanser 100)")
    a.add_argument("--patch", type=parse_patch, help="width × height, e.g. 5 (default) or 24x1")
    a.add_argument("--steps", type=_positive_int, help="PGD steps (default: each attack's)")
    a.add_argument("--step-size", type=_finite, help="PGD step size in pixel values (default: each attack's)")
    a.add_argument("--seed", type=int, help="seed of the patch's starting pixels (default 0)")
    a.add_argument("--device")
    a.add_argument("--positions", type=_positive_int, help="PatchCleanser: patch positions per image (default 2)")
    a.add_argument("--pairs", action="store_true", default=None,
                   help="PatchCleanser: attack every mask pair, not only the first round's masks (slower)")
    e = sub.add_parser("export", parents=[common],
                       help="write a run's model.safetensors (weights only) from its checkpoint.pt")
    e.add_argument("run_dirs", nargs="+")
    ls = sub.add_parser("list", parents=[common],
                        help="the committed runs: test-set accuracy at 5x5, a certification under way, the attacks run on them, whether they ship weights")
    ls.add_argument("--shipped", action="store_true", help="only runs with model.safetensors")
    ls.add_argument("--results", help="parent of run directories (default: results/runs)")
    return p


def list_runs(results=None, shipped_only: bool = False, errors: list | None = None) -> "pd.DataFrame":
    """One row per run: name, clean and certified (Condition 3.2; a DS run's own certificate)
    test accuracy against 5×5 patches from certification.csv (blank when not certified), the
    attacks whose records it holds (``attacked``: App. A.2's, DS, Mask-DS, PatchCleanser), and
    whether it ships its weights. ``certifying``: "k/n images" while a chunked certification is
    under way or was stopped part-way (its saved chunks,
    :func:`bagcert_lib.rundir.certification_progress`); the accuracy columns keep the last
    finished certification's values until it completes.
    ``epochs``: done / planned, marked "(training)" for an unfinished run, whose weights are its
    last epoch's, not the finished model, and "retraining k/n" for a run being trained again
    beside its old files (``sweep --retrain-unshipped``). ``errors`` (a list): a run with a file
    that cannot be read is left out and its error (naming the file) appended there; without it,
    the error is raised."""
    import pandas as pd

    from .results import load_certification, load_runs
    from .rundir import ATTACK, DEFENSE_ATTACK, WEIGHTS, certification_progress, epochs_done, retrain_dir

    attacks = {"App. A.2": ATTACK, "DS": DEFENSE_ATTACK["ds"], "Mask-DS": DEFENSE_ATTACK["mask-ds"],
               "PatchCleanser": DEFENSE_ATTACK["patchcleanser"]}
    runs = load_runs(results, errors)
    if runs.empty and not errors:
        raise FileNotFoundError(f"no runs (config.yaml) under {results or 'results/runs'}")
    cert = load_certification(results, errors).query("patch == '5x5' and condition in ('3.2', 'DS', 'CBN', 'Mask-BN', 'PC')")
    if errors:                                 # a run's bad config.yaml: named once
        errors[:] = list({str(e): e for e in errors}.values())
    cert = cert.set_index("run")[["clean_accuracy", "certified_accuracy"]]

    def readable(read, unreadable: str) -> str:
        """``read()``, or ``unreadable`` for a run file that cannot be read (kept in ``errors``)."""
        try:
            return read()
        except ValueError as e:
            if errors is None:
                raise
            errors.append(e)
            return unreadable

    def progress(path: Path) -> str:            # "k/n images" of a chunked certification
        part = certification_progress(path)
        return f"{part[0]:,}/{part[1]:,} images" if part else ""

    done = runs["epochs_done"].fillna(0).astype(int).astype(str) + "/" + runs["epochs"].astype(str)
    done = done.where(runs["finished"].fillna(False).astype(bool), done + " (training)")
    certifying = []
    for i, (path, epochs) in enumerate(zip(runs["path"], runs["epochs"])):
        stage = retrain_dir(Path(path))
        if stage.is_dir():
            done.iloc[i] += readable(lambda: f", retraining {epochs_done(stage)}/{epochs}",
                                     f", retraining ?/{epochs}")
        certifying.append(readable(lambda: progress(Path(path)), "?/? images"))
    out = pd.DataFrame({
        "run": runs["run"],
        "epochs": done,
        "clean (%)": runs["run"].map(cert["clean_accuracy"] * 100).round(1),
        "certified 5x5 (%)": runs["run"].map(cert["certified_accuracy"] * 100).round(1),
        "certifying": certifying,
        "attacked": [", ".join(name for name, f in attacks.items() if (Path(p) / f).is_file())
                     for p in runs["path"]],
        "weights": [(Path(p) / WEIGHTS).is_file() for p in runs["path"]],
    })
    return out[out["weights"]] if shipped_only else out


def run(args) -> None:
    import json

    from . import rundir

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
        out = train(cfg, run_dir, stop_after=args.stop_after, retrain=args.retrain)
        if env_rank() != 0:                  # rank 0 certifies and reports
            return
        certified = (run_dir / rundir.CERTIFICATION).is_file()
        if out["finished"] and not args.no_certify and not (out.get("skipped") and certified):
            df = certify_run(run_dir)
            print(df.query(f"patch == '{cfg.eval_patch}x{cfg.eval_patch}'").to_string(index=False))
        print(json.dumps(rundir.read_json(run_dir / rundir.METRICS), indent=2))
    elif args.cmd == "certify":
        from .runs import certify_run, resolve_run_dir

        run_dir = resolve_run_dir(args.run_dir)
        if args.join:
            return join(run_dir, args)
        if args.wait:
            raise ValueError("--wait goes with --join")
        df = certify_run(run_dir, args.patches, args.device, test_size=args.test_size,
                         compile=args.compile, chunk=args.chunk)
        print(df.to_string(index=False))
        print(f"saved in {run_dir / 'certification.csv'} "
              "(these shapes' rows replaced, the others kept)", file=sys.stderr)
    elif args.cmd == "attack":
        from .runs import attack_all, resolve_run_dir

        kw = {k: getattr(args, k) for k in ("n", "patch", "steps", "step_size", "seed", "device",
                                            "positions", "pairs") if getattr(args, k) is not None}
        if kw.get("n") == "all":
            kw["n"] = None
        run_dir = resolve_run_dir(args.run_dir)
        records = attack_all(run_dir, **kw)
        if "app-a2" in records:        # the defenses' own attacks print their records
            print(json.dumps(records["app-a2"], indent=2, default=float))
        print(f"saved in {run_dir}: " + ", ".join(
            rundir.ATTACK if name == "app-a2" else rundir.DEFENSE_ATTACK[name] for name in records),
            file=sys.stderr)
    elif args.cmd == "list":
        errors = []
        df = list_runs(args.results, args.shipped, errors)
        print(df.to_string(index=False, na_rep="") if len(df) else "no run ships its weights yet")
        if errors:                     # the others are listed; each bad run gets its line
            for e in errors:
                sys.stderr.write(f"error: run left out: {' '.join(str(e).split())}\n")
            sys.exit(2)
    else:
        from .pretrained import export_run
        from .runs import resolve_run_dir

        for d in args.run_dirs:
            print(f"wrote {export_run(resolve_run_dir(d, needs='checkpoint.pt'))}")


def join(run_dir, args) -> None:
    """``certify --join``: certify chunks of the certification under way in ``run_dir`` and say
    who combines them."""
    from . import rundir
    from .runs import join_certification

    given = [f"--{k.replace('_', '-')}" for k in ("patches", "test_size", "compile", "chunk")
             if getattr(args, k) is not None]
    if given:
        raise ValueError(f"{' and '.join(given)} cannot go with --join: a process that joins "
                         "certifies the shapes, images and chunk size of the certification it joins")
    saved = join_certification(run_dir, args.device, wait=args.wait)
    images = sum(b - a for a, b in saved)
    owner = rundir.busy(run_dir)
    print(f"certified {len(saved)} chunks ({images:,} test images) of {run_dir.name}; "
          + (f"{owner} combines them into {rundir.CERTIFICATION}" if owner else
             "no process is certifying it now: `python -m bagcert_lib certify` with the options "
             "that started it combines the saved chunks, certifying only what is missing"),
          file=sys.stderr)


def plainly(run, args) -> None:
    """``run(args)``, with the user's errors (:data:`USER_ERRORS`) as one line on stderr and exit
    code 2, or their traceback with ``args.debug``. Every command line of the library uses it."""
    try:
        run(args)
    except BrokenPipeError:            # the reader (e.g. `| head`) has gone: nothing to say
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except USER_ERRORS as err:
        if getattr(args, "debug", False):
            raise
        sys.stderr.write(f"error: {describe_error(err)} (--debug shows the traceback)\n")
        sys.exit(2)


def describe_error(err: BaseException) -> str:
    """One line: the error's message; for an OS error (permission, disk full, ...) what went
    wrong and the file; for a missing key, the key."""
    if isinstance(err, KeyError):
        return f"missing {err}"
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        return f"{err.strerror}: {err.filename}" + (f" → {err.filename2}" if err.filename2 else "")
    return " ".join(str(err).split()) or type(err).__name__


def main(argv=None):
    plainly(run, build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
