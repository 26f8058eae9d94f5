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
# # The headline configuration: accuracy against training time
#
# The paper's strongest CIFAR-10 setting, RF 7 and M 0.5, at every scale we trained it: clean and
# certified (Condition 3.2, 5×5) accuracy on the held-out evaluation images after every epoch
# (`history.csv`), against the cumulative training time on the run's machine. The longest run is
# the one with the most training compute (FLOPs counted from the model, `provenance.json`; hours
# on different machines, CPU classes or a GPU, do not compare); the test-set numbers of each run's last epoch, its
# compute and its measured training time are in the table below the plot.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from bagcert_lib.config import grids
from bagcert_lib.figures import readable
from bagcert_lib.results import headline_query, load_certification, load_history, load_runs, run_links
from bagcert_lib.scaling import run_flops

h = grids()["headline"]
runs = load_runs(results)
runs = runs[runs.finished.fillna(False).astype(bool) & runs.certified.astype(bool)].query(headline_query())
runs = runs.assign(training_flops=run_flops(runs))     # counted by older runs' configs where missing
if runs.empty:
    raise FileNotFoundError(f"no finished, certified run of the headline setting (RF {h['rf']}, "
                            f"M {h['margin']}) under {results or 'results/runs'}: train one with `make run`")
if (runs.profile != "smoke").any():   # smoke runs only exercise the pipeline: not a scale to compare
    runs = runs.query("profile != 'smoke'")
hist = load_history(results).query("run in @runs.run").copy()
hist["hours"] = hist.groupby("run").epoch_s.cumsum() / 3600
fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
for run, g in hist.groupby("run", sort=False):
    r = runs.set_index("run").loc[run]
    label = f"{r.profile}: width {r.width}, {r.epochs} epochs ({r.device})"
    for ax, col in ((axes[0], "clean_accuracy"), (axes[1], "certified_accuracy")):
        ax.plot(g.hours, g[col] * 100, marker="o", ms=3, label=label)
for ax, name in ((axes[0], "Clean accuracy (%)"), (axes[1], "Certified accuracy (%), 5×5, Condition 3.2")):
    ax.set_xlabel("Training time (hours)")
    ax.set_ylabel(name)
    ax.grid(alpha=0.3)
axes[0].legend(fontsize=8)
fig.suptitle(f"RF {h['rf']}, M {h['margin']}: held-out evaluation after every epoch", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# Test-set accuracy of each run at its last epoch (5×5 patches), with its training time:

# %% tags=["hide-input"]
cert = load_certification(results).query("run in @runs.run and patch == '5x5'")
acc = cert.pivot_table(index="run", columns="condition", values="certified_accuracy")
table = (cert.groupby("run").clean_accuracy.first().to_frame("clean")
         .join(acc.rename(columns=lambda c: f"certified ({c})"))
         .join(runs.set_index("run")[["profile", "width", "epochs", "training_flops", "wall_s", "device"]]))
table = (table.assign(hours=table.wall_s / 3600).drop(columns="wall_s")
         .sort_values(["training_flops", "hours"], na_position="first"))
if len(table):   # the longest run (most training FLOPs), glued for the book's front page
    best = table.iloc[-1]
    glue("longest_run", f"{best.name}: {best.clean * 100:.1f}% clean, "
         f"{best['certified (3.2)'] * 100:.1f}% certified (Condition 3.2) after "
         f"{best.hours:.1f} h", display=False)
    flops = "" if pd.isna(best.training_flops) else f"{best.training_flops:.1e} FLOPs, "
    glue("longest_scale", f"profile {best.profile}: width {best.width}, {best.epochs} epochs, "
         f"{flops}{best.hours:.1f} h on {best.device}", display=False)
    for key, col in (("clean", "clean"), ("certified_3_2", "certified (3.2)"),
                     ("certified_3_3", "certified (3.3)")):
        glue(f"longest_{key}", f"{best[col] * 100:.1f}%", display=False)
pct = [c for c in table.columns if c == "clean" or c.startswith("certified")]
readable(table, percent=pct, formats={"hours": "{:.2f}", "training_flops": "{:.2e}"})

# %% tags=["hide-input"]
run_links(runs, "headline.ipynb")
