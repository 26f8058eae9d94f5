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
# # Figure 8: Heaviside vs element-wise sigmoid vs channel-wise softmax
#
# *Comparison of Heaviside step function with alternative choices such as element-wise sigmoid or
# channel-wise softmax for five independent runs with different random seeds* (App. A.3): clean and
# certified (Condition 3.2, 5×5) accuracy on the held-out evaluation set after every epoch
# (`history.csv`), RF 7, M 0.5.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from myst_nb import glue

from bagcert_lib.config import grids
from bagcert_lib.figures import readable
from bagcert_lib.results import figure8_query, load_history, load_runs, run_links, scale_label, select_runs

f8 = grids()["figure8"]
runs = select_runs(load_runs(results), profile).query(figure8_query())
hist = load_history(results).query("run in @runs.run")
colors = {"heaviside": "tab:blue", "sigmoid": "tab:orange", "softmax": "tab:green"}
fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
for (head, seed), h in hist.groupby(["head", "seed"]):
    for ax, col in ((axes[0], "clean_accuracy"), (axes[1], "certified_accuracy")):
        ax.plot(h.epoch, h[col] * 100, color=colors.get(head, "k"), alpha=0.8,
                label=head if seed == min(hist.query("head == @head").seed) else None)
for ax, name in ((axes[0], "Top-1 accuracy (%)"), (axes[1], "Certified accuracy (%), 5×5")):
    ax.set_xlabel("Epochs")
    ax.set_ylabel(name)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
axes[0].legend()
fig.suptitle(scale_label(runs), fontsize=9)
glue("figure8_scale", scale_label(runs), display=False)
plt.show()
last = hist.groupby(["head", "seed"])[["epoch", "clean_accuracy", "certified_accuracy"]].last()
readable(last)

# %% [markdown]
# Per head, at the last epoch: how many seeds ran, their mean accuracy, how many ended near chance
# (clean accuracy ≤ `near_chance` of `_config.yml`, 15%: the paper's "unstable" runs) and how many
# certify nothing (certified accuracy < `certifies_nothing`, 1%):

# %% tags=["hide-input"]
per_head = last.groupby("head").agg(
    seeds=("epoch", "size"), clean_mean=("clean_accuracy", "mean"),
    certified_mean=("certified_accuracy", "mean"),
    near_chance=("clean_accuracy", lambda v: int((v <= f8["near_chance"]).sum())),
    certify_nothing=("certified_accuracy", lambda v: int((v < f8["certifies_nothing"]).sum())))
readable(per_head)

# %% [markdown]
# Runs committed before models were shipped were trained again to ship their weights (same
# configuration and seed, later code); how far each moved against this spread of seeds, and the
# code each was made with, is on the {doc}`provenance` page.

# %% tags=["hide-input"]
run_links(runs, "figure8.ipynb")
