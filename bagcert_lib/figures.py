"""Plotting helpers shared by the figure notebooks (matplotlib; reads the results schema)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .config import grids


def sweep_panels(cert: pd.DataFrame, patches: list, condition: str = "3.2", title: str = ""):
    """Figures 3 and 4: certified accuracy per patch shape; left, the RF sweep at the headline
    margin; right, the margin sweep at the headline RF (heaviside, seed 0, σ 0)."""
    g = grids()
    rf0, m0 = g["headline"]["rf"], g["headline"]["margin"]
    labels = [f"{h}x{w}" for h, w in patches]
    base = cert.query("head == 'heaviside' and seed == 0 and sigma == 0 and condition == @condition")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    panels = ((axes[0], base.query("margin == @m0"), "rf", f"Margin M={m0}", "RF"),
              (axes[1], base.query("rf == @rf0"), "margin", f"RF={rf0}", "M"))
    for ax, df, key, panel_title, legend in panels:
        for value, runs in df.groupby(key):
            acc = runs.set_index("patch").reindex(labels)["certified_accuracy"] * 100
            ax.plot(range(len(labels)), acc.values, marker="o", ms=3, label=f"{legend} {value:g}")
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
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
