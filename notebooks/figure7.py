# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 7: clean vs adversarial and certified vs adversarial accuracy
#
# *Scatter plots of clean versus adversarial accuracy (left) and certified versus adversarial accuracy
# (right). Color encodes different receptive field sizes.* Adversarial accuracy is the App. A.2 PGD
# patch attack (5×5) on each run's attacked test images (`attack.json`); clean and certified accuracy
# are measured on the same images. Certified ≤ adversarial ≤ clean must hold for every model.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from myst_nb import glue

from bagcert_lib.figures import readable
from bagcert_lib.results import grid_runs, run_links, scale_label

runs = grid_runs(results, profile).dropna(
    subset=["adversarial_accuracy"])
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
for ax, x, label in ((axes[0], "attack_clean_accuracy", "Clean accuracy (%)"),
                     (axes[1], "attack_certified_accuracy", "Certified accuracy (%)")):
    sc = ax.scatter(runs[x] * 100, runs.adversarial_accuracy * 100, c=runs.rf, cmap="viridis",
                    vmin=5, vmax=13, s=40)
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("Adversarial accuracy (%)")
fig.colorbar(sc, ax=axes, label="RF")
fig.suptitle(scale_label(runs), fontsize=9)
plt.show()
table = runs.set_index(["rf", "margin"]).sort_index()[
    ["attack_n", "attack_clean_accuracy", "adversarial_accuracy", "attack_certified_accuracy", "certified_broken"]]
table = table.astype({"attack_n": int, "certified_broken": int}).rename(columns={
    "attack_n": "images", "attack_clean_accuracy": "clean", "adversarial_accuracy": "adversarial",
    "attack_certified_accuracy": "certified (3.2)", "certified_broken": "certified but broken"})
readable(table)

# %% [markdown]
# The order certified ≤ adversarial ≤ clean, and no certified sample broken, checked by code:

# %% tags=["hide-input"]
ordered = ((runs.attack_certified_accuracy <= runs.adversarial_accuracy)
           & (runs.adversarial_accuracy <= runs.attack_clean_accuracy))
assert (runs.certified_broken == 0).all(), "a certified sample was broken: the certificate is unsound"
glue("figure7_ordered", f"{int(ordered.sum())} of {len(runs)}", display=False)
glue("figure7_scale", scale_label(runs), display=False)
{"models": len(runs), "ordered": int(ordered.sum()), "certified_broken": int(runs.certified_broken.sum())}

# %% tags=["hide-input"]
run_links(runs, "figure7.ipynb")
