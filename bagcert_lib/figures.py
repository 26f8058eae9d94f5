"""Plotting helpers shared by the figure notebooks (matplotlib; reads the results schema)."""
from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .certifier import _pair
from .config import grids
from .results import GRID_RUNS, grid_runs, load_certification, scale_label, smoothing_runs


def smoothing_label(run) -> str:
    """'DS column b=4, θ=0.3' for a Derandomized Smoothing run (a row of the results schema)."""
    kind = run["method"].removeprefix("ds-")
    return f"DS {kind} {'s' if kind == 'block' else 'b'}={int(run['ablation_size'])}, θ={run['theta']:g}"


def sweep_panels(cert: pd.DataFrame, patches: list, condition: str = "3.2", title: str = "",
                 smoothing: pd.DataFrame | None = None):
    """Figures 3 and 4: certified accuracy per patch shape; left, the RF sweep at the headline
    margin; right, the margin sweep at the headline RF (heaviside, seed 0, σ 0). ``smoothing``:
    certification rows of our DS runs, drawn dashed in both panels."""
    g = grids()
    rf0, m0 = g["headline"]["rf"], g["headline"]["margin"]
    labels = [f"{h}x{w}" for h, w in patches]
    base = cert.query(f"{GRID_RUNS} and condition == @condition")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = ((axes[0], base.query("margin == @m0"), "rf", f"Margin M={m0}", "RF"),
              (axes[1], base.query("rf == @rf0"), "margin", f"RF={rf0}", "M"))
    for ax, df, key, panel_title, legend in panels:
        for value, runs in df.groupby(key):
            acc = runs.set_index("patch").reindex(labels)["certified_accuracy"] * 100
            ax.plot(range(len(labels)), acc.values, marker="o", ms=3, label=f"{legend} {value:g}")
        for (run, _), ds in ([] if smoothing is None else smoothing.groupby(["run", "method"])):
            acc = ds.set_index("patch").reindex(labels)["certified_accuracy"] * 100
            ax.plot(range(len(labels)), acc.values, ls="--", marker="x", ms=4, color="0.25" if
                    "column" in run else "0.6", label=f"{smoothing_label(ds.iloc[0])} (ours)")
        ax.set_xticks(range(len(labels)), [lab.replace("x", "×") for lab in labels], rotation=60)
        ax.set_title(panel_title)
        ax.set_xlabel("Patch size")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if len(df):
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", transform=ax.transAxes)
    axes[0].set_ylabel(f"Certified accuracy (%), Condition {condition}")
    fig.suptitle(title.replace("; ", ";\n"), fontsize=9)
    fig.tight_layout()
    return fig


def sweep_figure(patches: list, condition: str = "3.2", results=None, profile=None):
    """Figures 3 and 4 from the results folder: (runs shown, figure, certified accuracy in % per
    model and patch shape: BagCert per (RF, M), then our DS runs), as fractions: show it with
    ``readable(table, percent=table.columns, percent_in_header=False)``."""
    patches = [_pair(p, "patch") for p in patches]
    runs = grid_runs(results, profile)
    ds_runs = smoothing_runs(results, runs.profile.iloc[0] if len(runs) else profile)
    every = load_certification(results)
    cert = every.query("run in @runs.run")
    ds = every.query("run in @ds_runs.run and condition == 'DS'")
    fig = sweep_panels(cert, patches, condition, title=scale_label(pd.concat([runs, ds_runs])),
                       smoothing=ds)
    columns = [f"{h}x{w}" for h, w in patches]
    table = cert.query("condition == @condition").pivot_table(
        index=["rf", "margin"], columns="patch", values="certified_accuracy").reindex(columns=columns)
    table.index = [f"RF {rf}, M {m:g}" for rf, m in table.index]
    if len(ds):
        dst = ds.assign(model=[smoothing_label(r) for _, r in ds.iterrows()]).pivot_table(
            index="model", columns="patch", values="certified_accuracy").reindex(columns=columns)
        table = pd.concat([table, dst])
    table.columns.name = None
    table.index.name = "model (certified accuracy, %)"
    return pd.concat([runs, ds_runs]), fig, table


#: Column and index names in words, for every table in the book (:func:`readable`).
WORDS = {
    "rf": "receptive field", "margin": "margin M", "head": "head", "sigma": "σ", "seed": "seed",
    "seeds": "seeds", "profile": "profile", "width": "width", "epochs": "epochs", "epoch": "epoch",
    "method": "method", "model": "model", "device": "machine", "run": "run", "runs": "runs",
    "n": "images", "attack_n": "images attacked", "images": "images",
    "clean": "clean accuracy", "clean_accuracy": "clean accuracy",
    "certified": "certified accuracy", "certified_accuracy": "certified accuracy",
    "certified (3.2)": "certified accuracy, Condition 3.2",
    "certified (3.3)": "certified accuracy, Condition 3.3",
    "certified_global_accuracy": "certified accuracy, Condition 3.3",
    "certified_accuracy_5x5": "certified accuracy, 5×5",
    "adversarial": "adversarial accuracy", "adversarial_accuracy": "adversarial accuracy",
    "attack_clean_accuracy": "clean accuracy", "attack_certified_accuracy": "certified accuracy",
    "certified_broken": "certified but broken", "certified but broken": "certified but broken",
    "clean_mean": "mean clean accuracy", "certified_mean": "mean certified accuracy",
    "near_chance": "seeds near chance", "certify_nothing": "seeds certifying nothing",
    "hours": "training hours", "wall_s": "training seconds", "training_flops": "training FLOPs", "seconds": "seconds",
    "forward_s": "forward pass (s)", "certify_s": "certification (s)",
    "seconds_per_epoch": "seconds per epoch", "training_hours": "training (h)",
    "certification_hours": "certification (h)", "attack_hours": "attack (h)", "total_hours": "total (h)",
    "parameters": "parameters", "certify_over_forward": "certification / forward pass",
    "patch": "patch", "condition": "condition", "locator": "where in the paper",
}

_PERCENT = re.compile(r"accuracy|^clean|^certified(?! but)|^adversarial")


def _words(name) -> str:
    if name is None:
        return None
    s = str(name)
    for prefix in ("ours: ", "paper: "):          # Table 1's "ours: forward_s" and similar
        if s.startswith(prefix):
            return prefix + _words(s[len(prefix):])
    return WORDS.get(s, s.replace("_", " ").replace("x", "×") if re.fullmatch(r"\d+x\d+", s) else
                     s.replace("_", " "))


def _number(v, name, precision: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if name in ("margin", "sigma", "theta") and isinstance(v, (int, float, np.number)):
        return f"{v:g}"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        return f"{v:,.{precision}f}" if abs(v) >= 1 or v == 0 else f"{v:.{max(precision, 2)}g}"
    return str(v)


def readable(df: pd.DataFrame, percent=None, precision: int = 1, words: dict | None = None,
             index: bool = True, formats: dict | None = None, percent_in_header: bool = True):
    """A table for readers: fractions as percent with one decimal (accuracy columns, or those named
    in ``percent``; header gets "(%)"), margins as in the paper (0.25), other numbers with
    ``precision`` decimals and thousands separators, missing values as "—", and headers in words
    (:data:`WORDS`, updated by ``words``). Returns a DataFrame of strings (deterministic, so a
    cell compared by ``pytest --nbval`` stays stable). ``formats``: a format string per column
    (e.g. ``{"hours": "{:.2f}"}``). ``index=False``: a Styler without the index column."""
    names = {**WORDS, **(words or {})}
    pct = set(percent) if percent is not None else {
        c for c in df.columns if _PERCENT.search(str(c)) and pd.api.types.is_float_dtype(df[c])}
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        if formats and c in formats:
            out[c] = ["—" if pd.isna(v) else formats[c].format(v) for v in df[c]]
        elif c in pct:
            out[c] = [("—" if pd.isna(v) else f"{v * 100:.1f}") for v in df[c]]
        else:
            out[c] = [_number(v, c, precision) for v in df[c]]

    def header(c):
        w = names.get(str(c)) if str(c) in names else _words(c)
        return f"{w} (%)" if c in pct and percent_in_header and not w.endswith("(%)") else w

    out.columns = [header(c) for c in df.columns]
    if not index:
        return out.reset_index(drop=True).style.hide(axis="index").set_uuid("readable")
    if isinstance(df.index, pd.MultiIndex):
        levels = [[_number(v, n, precision) for v in df.index.get_level_values(i)]
                  for i, n in enumerate(df.index.names)]
        out.index = pd.MultiIndex.from_arrays(levels, names=[header(n) if n else n for n in df.index.names])
    else:
        out.index = pd.Index([_number(v, df.index.name, precision) for v in df.index],
                             name=header(df.index.name) if df.index.name else None)
    return out
