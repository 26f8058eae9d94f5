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
# # Figure 4: certified accuracy for non-square patches of 24 pixels (1 × 24 … 24 × 1)
#
# *Certified accuracy against non-square patches of total size 24 pixels on CIFAR10* (Condition
# 3.2), for different receptive fields (top, M = 0.5) and train margins (bottom, RF 7), *compared
# to Derandomized Smoothing with Column-Smoothing* {cite}`levine2020derandomized`. Shapes are
# width × height, as in the paper: 1 × 24 is tall and narrow, 24 × 1 short but wide. Each line is
# one of our models, certified against every shape from one forward pass; thick black: our
# strongest shipped model; dashed: our DS runs. Red, hollow: what the paper
# {cite}`metzen2021bagcert` states for this figure (§4, `results/paper/figures.csv`) — RF 7,
# M 0.5 certifies 40 % or more at every aspect ratio, and short-but-wide patches (24 × 1, 12 × 2)
# bring column smoothing close to 0 %.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs
condition: str = "3.2"  # certification condition: 3.2 or 3.3

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown
from myst_nb import glue

from bagcert_lib.config import grids
from bagcert_lib.figures import book_style, made_from, readable, sweep_figure

book_style()
# (h, w) pairs, drawn from tall-and-narrow (1 × 24) to short-but-wide (24 × 1)
shapes = sorted(grids()["aspect_ratio_patches"], key=lambda hw: hw[1])
runs, fig, table = sweep_figure(shapes, condition, results, profile, figure="figure4")
glue("figure4_made_from", Markdown(made_from(runs)), display=False)
plt.show()

# %% [markdown]
# Made from {glue:md}`figure4_made_from`. Machines, commits, timings and the run folders:
# {doc}`provenance`.
#
# Certified accuracy (%) of the models drawn, per shape (width × height):

# %% tags=["hide-input"]
readable(table, percent=table.columns, percent_in_header=False)
