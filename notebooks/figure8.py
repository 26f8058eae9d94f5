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
# ## The same configuration, trained again
#
# Runs committed before models were shipped were trained again to ship their weights
# (`python -m bagcert_lib.sweep --retrain-unshipped`; the replaced run's numbers are kept in its
# `previous.json`). Same configuration and seed, later code and torch: how far the test-set
# numbers (all test images, 5×5, Condition 3.2) moved, beside the spread of the five Heaviside
# seeds above.

# %% tags=["hide-input"]
from bagcert_lib.results import load_certification, load_retrained

again = load_retrained(results).query("run in @runs.run and patch == '5x5' and condition == '3.2'")
cert = load_certification(results).query("run in @runs.run and patch == '5x5' and condition == '3.2'")
seeds = cert.query("head == 'heaviside'")
spread = seeds.query("run not in @again.run")        # the seeds' spread, without the runs compared
spread_of = f"the {len(spread)} Heaviside seeds not trained again"
if len(spread) < 2:
    spread, spread_of = seeds, f"the {len(seeds)} Heaviside seeds"
if len(again):
    table = again.set_index("run")[["clean_accuracy_before", "clean_accuracy_after",
                                    "certified_accuracy_before", "certified_accuracy_after",
                                    "commit_before", "commit_after", "torch_before", "torch_after"]]
    table = table.assign(commit_before=table.commit_before.str[:7], commit_after=table.commit_after.str[:7])
    display(readable(table, words={"clean_accuracy_before": "clean before", "clean_accuracy_after": "clean after",
                                   "certified_accuracy_before": "certified before",
                                   "certified_accuracy_after": "certified after"}))
    print(f"moved by at most {(again.clean_accuracy_after - again.clean_accuracy_before).abs().max() * 100:.1f} "
          f"points clean and {(again.certified_accuracy_after - again.certified_accuracy_before).abs().max() * 100:.1f} "
          f"certified; {spread_of} span {(spread.clean_accuracy.max() - spread.clean_accuracy.min()) * 100:.1f} "
          f"clean and {(spread.certified_accuracy.max() - spread.certified_accuracy.min()) * 100:.1f} certified")
else:
    print("No run shown on this page has been trained again yet.")

# %% tags=["hide-input"]
run_links(runs, "figure8.ipynb")
