"""One results schema, read by every figure and table: run directories -> pandas DataFrames.

Each run directory (see ``train.py`` and ``runs.py``) contributes:

* :func:`load_runs` — one row per run: its config, final metrics, provenance and attack summary;
* :func:`load_certification` — one row per (run, patch shape, condition) from certification.csv;
* :func:`load_history` — one row per (run, epoch) from history.csv.

Every row carries the run's ``run`` name and the config columns (rf, margin, head, sigma, seed,
profile, width, epochs, train_size), so a figure selects its runs with ordinary pandas queries.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from .runs import results_dir

CONFIG_COLUMNS = ["rf", "margin", "head", "sigma", "seed", "profile", "width", "epochs", "train_size"]


def run_dirs(results=None) -> list[Path]:
    """Run directories (those with a config.yaml) under ``results`` (default: results_dir())."""
    root = Path(results) if results else results_dir()
    return sorted(p.parent for p in root.glob("*/config.yaml"))


def _config(run: Path) -> dict:
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    return {"run": run.name, "path": str(run), **{k: cfg.get(k) for k in CONFIG_COLUMNS}}


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def load_runs(results=None) -> pd.DataFrame:
    """One row per run: config, metrics.json, provenance and attack.json summaries."""
    rows = []
    for run in run_dirs(results):
        prov, metrics, attack = (_json(run / f) for f in ("provenance.json", "metrics.json", "attack.json"))
        rows.append({
            **_config(run),
            "finished": metrics.get("finished", False),
            "epochs_done": prov.get("epochs_done"),
            "eval_clean_accuracy": metrics.get("clean_accuracy"),
            "eval_certified_accuracy": metrics.get("certified_accuracy"),
            "parameters": prov.get("parameters"),
            "n_train": prov.get("n_train"),
            "device": prov.get("device"),
            "dataset": prov.get("dataset", {}).get("name"),
            "dataset_sha256": prov.get("dataset", {}).get("sha256"),
            "commit": prov.get("git", {}).get("commit"),
            "wall_s": prov.get("wall_s"),
            "seconds_per_epoch": prov.get("seconds_per_epoch"),
            "attack_n": attack.get("n"),
            "adversarial_accuracy": attack.get("adversarial_accuracy"),
            "attack_clean_accuracy": attack.get("clean_accuracy"),
            "attack_certified_accuracy": attack.get("certified_accuracy"),
            "certified_broken": attack.get("certified_broken"),
        })
    return pd.DataFrame(rows, columns=None if rows else ["run", "path", *CONFIG_COLUMNS])


def _per_run_csv(results, filename) -> pd.DataFrame:
    frames = []
    for run in run_dirs(results):
        if (run / filename).is_file():
            df = pd.read_csv(run / filename, dtype={"condition": str, "patch": str})
            for k, v in reversed(list(_config(run).items())):
                df.insert(0, k, v)
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "path", *CONFIG_COLUMNS])


def load_certification(results=None) -> pd.DataFrame:
    """One row per (run, patch, condition): clean and certified accuracy on the test split."""
    return _per_run_csv(results, "certification.csv")


def load_history(results=None) -> pd.DataFrame:
    """One row per (run, epoch): loss, lr, held-out clean / certified accuracy, seconds."""
    return _per_run_csv(results, "history.csv")


def scale_label(runs: pd.DataFrame) -> str:
    """'profile cpu: width 32, 6 epochs, 50,000 training images' for the runs shown."""
    parts = []
    for (profile, width, epochs, n), _ in runs.groupby(["profile", "width", "epochs", "n_train"]):
        parts.append(f"profile {profile}: width {width}, {epochs} epochs, {int(n):,} training images")
    return "; ".join(parts) or "no runs"
