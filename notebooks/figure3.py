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
# # Figure 3: certified accuracy for square patches 1×1 … 16×16
#
# *Certified accuracy against square patches of different sizes on CIFAR10* (Condition 3.2), for different receptive fields (left, M = 0.5) and train margins
# (right, RF 7). Each line is one model, certified against every patch shape from one forward pass
# (`certification.csv` of each run). Reads only the results folder.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs
condition: str = "3.2"  # certification condition: 3.2 or 3.3

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from myst_nb import glue

from bagcert_lib.config import grids
from bagcert_lib.figures import sweep_panels
from bagcert_lib.results import load_certification, load_runs, run_links, scale_label, select_runs

runs = select_runs(load_runs(results), profile).query("head == 'heaviside' and seed == 0 and sigma == 0")
cert = load_certification(results).query("run in @runs.run")
patches = [(p, p) for p in grids()["square_patches"]]
fig = sweep_panels(cert, patches, condition, title=scale_label(runs))
glue("figure3_scale", scale_label(runs), display=False)
plt.show()

# %% [markdown]
# Certified accuracy per model and patch shape (Condition 3.2 unless `condition` says otherwise):

# %% tags=["hide-input"]
cert.query("condition == @condition").pivot_table(
    index=["rf", "margin"], columns="patch", values="certified_accuracy").reindex(columns=[f"{h}x{w}" for h, w in patches]).round(3)

# %% tags=["hide-input"]
run_links(runs, "figure3.ipynb")
