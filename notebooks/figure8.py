# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
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

# %%
import matplotlib.pyplot as plt

from bagcert_lib.config import grids
from bagcert_lib.results import load_history, load_runs, scale_label

f8 = grids()["figure8"]
hist = load_history(results).query("rf == @f8['rf'] and margin == @f8['margin'] and sigma == 0")
runs = load_runs(results).query("run in @hist.run")
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
hist.groupby(["head", "seed"])[["clean_accuracy", "certified_accuracy"]].last().round(3)
