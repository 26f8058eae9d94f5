"""Plotting helpers shared by the figure notebooks (matplotlib; reads the results schema)."""
from __future__ import annotations

import matplotlib.pyplot as plt
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
    model and patch shape: BagCert per (RF, M), then our DS runs)."""
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
    return pd.concat([runs, ds_runs]), fig, (table * 100).round(1)
