# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Figure 3: certified accuracy for square patches 1 × 1 … 16 × 16
#
# *Certified accuracy against square patches of different sizes on CIFAR10* (Condition 3.2), for
# different receptive fields (top, M = 0.5) and train margins (bottom, RF 7). Each line is one of
# our models, certified against every patch shape from one forward pass (`certification.csv` of
# each run); thick black: our strongest shipped model (the headline configuration with the most
# training compute); dashed: our Derandomized Smoothing runs {cite}`levine2020derandomized`.
# Red, hollow: what the paper {cite}`metzen2021bagcert` states for this figure — RF 7, M 0.5
# certifies 60 % at 5 × 5 (Abstract, §4) and "non-trivial performance for up to 10 × 10" (§4)
# (`results/paper/figures.csv`). Grey, hollow: the baselines at 5 × 5 as their papers report them,
# IBP {cite}`chiang2020certified` and DS {cite}`levine2020derandomized`
# (`results/baselines/baselines.csv`).

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs
condition: str = "3.2"  # certification condition: 3.2 or 3.3

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown
from myst_nb import glue

from bagcert_lib.config import grids
from bagcert_lib.figures import baselines_at_our_scale, book_style, made_from, readable, sweep_figure

book_style()
runs, fig, table = sweep_figure(grids()["square_patches"], condition, results, profile, figure="figure3")
glue("figure3_made_from", Markdown(made_from(runs)), display=False)
glue("figure3_baselines", Markdown(baselines_at_our_scale(results, profile, condition, "5x5")["sentence"] or
                                   "No run of the grid has been certified yet."), display=False)
plt.show()

# %% [markdown]
# {glue:md}`figure3_baselines`
#
# Made from {glue:md}`figure3_made_from`. Machines, commits, timings and the run folders:
# {doc}`provenance`.
#
# Certified accuracy (%) of the models drawn, at squares 1 … 6, 8, 10, 12 and 16 (each run's
# `certification.csv` has every size):

# %% tags=["hide-input"]
shown = [c for c in table.columns if int(c.split("x")[0]) in (1, 2, 3, 4, 5, 6, 8, 10, 12, 16)]
readable(table[shown], percent=shown, percent_in_header=False)
