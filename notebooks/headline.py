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
# # The headline configuration: accuracy against training compute
#
# The paper's strongest CIFAR-10 setting, RF 7 and M 0.5, at every scale we trained it: clean and
# certified (Condition 3.2, 5 × 5) accuracy on the held-out evaluation images after every epoch
# (`history.csv`), against the training compute spent so far (FLOPs counted from the model,
# `provenance.json`: runs trained on different machines compare on this axis, their hours do
# not). Red: the paper's model {cite}`metzen2021bagcert` (86 % clean, 60 % certified; Abstract,
# §4) at its training compute (width 768, 350 epochs). The test-set numbers of each run's last
# epoch are in the table below the plot.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown
from myst_nb import glue

from bagcert_lib.config import grids
from bagcert_lib.figures import (FIG_WIDTH, PAPER_COLOR, book_style, flops_text, made_from, paper_values,
                                 readable)
from bagcert_lib.results import headline_runs, load_certification, load_history, load_runs
from bagcert_lib.scaling import paper_flops, run_flops

book_style()
h = grids()["headline"]
runs = headline_runs(load_runs(results))
runs = runs.assign(training_flops=run_flops(runs))     # counted by older runs' configs where missing
if runs.empty:
    raise FileNotFoundError(f"no finished, certified run of the headline setting (RF {h['rf']}, "
                            f"M {h['margin']}) under {results or 'results/runs'}: train one with `make run`")
runs = runs.sort_values(["training_flops", "run"])
hist = load_history(results).query("run in @runs.run").copy()
per_run = runs.set_index("run")
epochs_done = per_run.epochs_done.fillna(per_run.epochs)     # FLOPs after each epoch: a share of the run's
hist["flops"] = hist.epoch / hist.run.map(epochs_done) * hist.run.map(per_run.training_flops)
paper = paper_values("figure2").query("condition == '3.2'").iloc[0]
fig, axes = plt.subplots(2, 1, figsize=(FIG_WIDTH, 10), sharex=True, layout="constrained")
for run in runs.run:
    g, r = hist[hist.run == run], per_run.loc[run]
    if g.empty:
        continue
    label = f"{r.profile}: width {r.width}, {r.epochs} epochs, {flops_text(r.training_flops)} FLOPs"
    for ax, col in ((axes[0], "clean_accuracy"), (axes[1], "certified_accuracy")):
        ax.plot(g.flops, g[col] * 100, marker="o", ms=4, lw=1.8, label=label)
for ax, col, name in ((axes[0], "clean_accuracy", "Clean accuracy (%)"),
                      (axes[1], "certified_accuracy", "Certified accuracy (%), 5×5")):
    ax.scatter(paper_flops(), paper[col] * 100, marker="*", s=300, facecolors="none", edgecolors=PAPER_COLOR,
               linewidths=2, zorder=5, label=f"paper: width 768, 350 epochs, {flops_text(paper_flops())} FLOPs "
                                             "(Abstract, §4)")
    ax.set_ylabel(name)
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3, which="both")
axes[1].set_xlabel("Training compute so far (FLOPs)")
axes[0].set_title(f"RF {h['rf']}, M {h['margin']}, held-out images (certified: Condition 3.2)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=1)
glue("headline_made_from", Markdown(made_from(runs)), display=False)
plt.show()

# %% [markdown]
# Made from {glue:md}`headline_made_from`. Machines, commits, training times and the run
# folders: {doc}`provenance`.
#
# Test-set accuracy of each run at its last epoch (5 × 5 patches), with its training compute,
# and the paper's model:

# %% tags=["hide-input"]
cert = load_certification(results).query("run in @runs.run and patch == '5x5'")
acc = cert.pivot_table(index="run", columns="condition", values="certified_accuracy")
table = (cert.groupby("run").clean_accuracy.first().to_frame("clean")
         .join(acc.rename(columns=lambda c: f"certified ({c})"))
         .join(per_run[["profile", "width", "epochs", "training_flops", "wall_s"]]))
table = table.sort_values(["training_flops", "wall_s"], na_position="first")
if len(table):   # the run with the most training compute, glued for the book's front page
    best = table.iloc[-1]
    glue("longest_run", f"{best.name}: {best.clean * 100:.1f}% clean, "
         f"{best['certified (3.2)'] * 100:.1f}% certified (Condition 3.2) after "
         f"{flops_text(best.training_flops)} training FLOPs", display=False)
    glue("longest_scale", f"profile {best.profile}: width {best.width}, {best.epochs} epochs, "
         f"{flops_text(best.training_flops)} training FLOPs", display=False)
    for key, col in (("clean", "clean"), ("certified_3_2", "certified (3.2)"),
                     ("certified_3_3", "certified (3.3)")):
        glue(f"longest_{key}", f"{best[col] * 100:.1f}%", display=False)
table.index = [f"{r.profile}: width {r.width}, {r.epochs} epochs" for r in table.itertuples()]
table = table.drop(columns=["wall_s", "profile", "width", "epochs"])
table.loc["paper (Abstract, §4): width 768, 350 epochs"] = {       # Condition 3.3: "about 3 points" less
    "clean": paper.clean_accuracy, "certified (3.2)": paper.certified_accuracy, "training_flops": paper_flops()}
table.index.name = "run"
readable(table, percent=["clean", "certified (3.2)", "certified (3.3)"], formats={"training_flops": "{:.1e}"})
