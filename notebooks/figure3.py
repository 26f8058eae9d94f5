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
from bagcert_lib.figures import readable, sweep_figure
from bagcert_lib.results import run_links, scale_label

runs, fig, table = sweep_figure(grids()["square_patches"], condition, results, profile)
glue("figure3_scale", scale_label(runs), display=False)
plt.show()

# %% [markdown]
# Certified accuracy (%) per model (BagCert RF, M; then our DS runs) and patch shape (Condition 3.2
# unless `condition` says otherwise):

# %% tags=["hide-input"]
readable(table, percent=table.columns, percent_in_header=False)

# %% tags=["hide-input"]
run_links(runs, "figure3.ipynb")
