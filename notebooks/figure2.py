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
# # Figure 2: clean versus certified accuracy
#
# *Clean versus certified accuracy on CIFAR10 and ImageNet for BagCert with different receptive fields
# and train margins when certifying via Condition 3.3 (circles) and Condition 3.2 (stars), same
# setting connected by thin line.* Ours: every heaviside run (seed 0, σ 0) against 5×5 patches on the
# test set (`certification.csv`), and our Derandomized Smoothing runs (block and column smoothing,
# trained and certified here by `bagcert_lib.smoothing`; crosses). Baselines: the values their papers
# report, each with its source in `results/baselines/baselines.csv` (values we could not source are
# left out). ImageNet: our ImageNet runs (profile `imagenet`, App. A.1.2: RF 17/25/29 against
# 32×32 patches at 224 px, `bagcert_lib.results.imagenet_runs`) when the results folder holds any,
# beside the paper's stated numbers (`results/paper/figure2_imagenet.csv`); without one the panel
# shows the paper's numbers alone, and its title says which.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs
patch: str = "5x5"  # patch shape of the CIFAR-10 panel

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
from myst_nb import glue

from bagcert_lib.config import REPO_ROOT
from bagcert_lib.figures import readable, smoothing_label
from bagcert_lib.results import (grid_runs, imagenet_runs, load_certification, run_links, scale_label,
                                 smoothing_runs)

runs = grid_runs(results, profile)
ds_runs = smoothing_runs(results, runs.profile.iloc[0] if len(runs) else profile)
cert = load_certification(results).query("patch == @patch and run in @runs.run")
ds = load_certification(results).query("patch == @patch and condition == 'DS' and run in @ds_runs.run")
ours = cert.pivot_table(index=["run", "rf", "margin"], columns="condition",
                        values=["clean_accuracy", "certified_accuracy"]).reset_index() if len(cert) else (
    pd.DataFrame(columns=pd.MultiIndex.from_tuples(        # nothing certified yet: an empty panel
        [("run", ""), ("rf", ""), ("margin", "")] + [(v, c) for v in ("clean_accuracy", "certified_accuracy")
                                                    for c in ("3.2", "3.3")])))
baselines = pd.read_csv(REPO_ROOT / "results" / "baselines" / "baselines.csv")
imagenet_paper = pd.read_csv(REPO_ROOT / "results" / "paper" / "figure2_imagenet.csv", dtype={"condition": str})
inet_ours = imagenet_runs(results)   # empty until an ImageNet run is finished and certified

fig, (ax, ax_in) = plt.subplots(1, 2, figsize=(13, 6.5))
cmap = plt.get_cmap("viridis")
for _, r in ours.iterrows():
    color = cmap((r.rf.item() - 5) / 8)
    clean = r[("clean_accuracy", "3.2")] * 100
    c32, c33 = r[("certified_accuracy", "3.2")] * 100, r[("certified_accuracy", "3.3")] * 100
    ax.plot([clean, clean], [c33, c32], color=color, lw=0.7)
    ax.scatter(clean, c33, marker="o", color=color, s=30)
    ax.scatter(clean, c32, marker="*", color=color, s=80)
for rf in sorted(ours.rf.unique()):
    ax.scatter([], [], marker="s", color=cmap((rf - 5) / 8), label=f"BagCert RF {rf}")
for marker, (_, d) in zip("XP", ds.iterrows()):
    ax.scatter(d.clean_accuracy * 100, d.certified_accuracy * 100, marker=marker, color="tab:red", s=70,
               label=f"{smoothing_label(d)} (ours, n={d.n:,})")
cifar = baselines.query("dataset == 'CIFAR-10' and patch == @patch").drop_duplicates("method")
for marker, (_, b) in zip("^vDPX", cifar.iterrows()):
    ax.scatter(b.clean_accuracy * 100, b.certified_accuracy * 100, marker=marker, color="0.3",
               s=40, label=f"{b.method} (reported)")
ax.set_xlabel("Clean accuracy (%)")
ax.set_ylabel(f"Certified accuracy (%), {patch.replace('x', '×')}")
ax.set_title("CIFAR10 — ours: " + scale_label(pd.concat([runs, ds_runs])).replace("; ", ";\n"), fontsize=8)
ax.grid(alpha=0.3)
ax.legend(fontsize=7, loc="upper left")

inet = baselines.query("dataset == 'ImageNet'")
for marker, (method, b) in zip("^vDPX", inet.groupby("method")):
    ax_in.scatter(b.clean_accuracy * 100, b.certified_accuracy * 100, marker=marker, color="0.3",
                  s=35, label=f"{method} (reported)")
for _, p in imagenet_paper.iterrows():
    ax_in.axhline(p.certified_accuracy * 100, color="tab:purple", ls="--" if p.condition == "3.3" else "-",
                  lw=1, label=f"BagCert paper RF {p.rf}, M {p.margin}: Condition {p.condition} (clean not stated)")
for _, r in inet_ours.iterrows():     # ours, as the CIFAR panel: 3.3 circles, 3.2 stars
    color = cmap((r.rf - 17) / 12)
    clean, c32, c33 = r.clean_accuracy * 100, r.certified_3_2 * 100, r.certified_3_3 * 100
    ax_in.plot([clean, clean], [c33, c32], color=color, lw=0.7)
    ax_in.scatter(clean, c33, marker="o", color=color, s=30)
    ax_in.scatter(clean, c32, marker="*", color=color, s=80)
for (rf, margin), _ in inet_ours.groupby(["rf", "margin"]):
    ax_in.scatter([], [], marker="s", color=cmap((rf - 17) / 12), label=f"BagCert RF {rf}, M {margin:g} (ours)")
ax_in.set_xlabel("Clean accuracy (%)")
ax_in.set_ylabel("Certified accuracy (%), 2% patch (32×32 at 224 px)")
imagenet_shown = ("ours (profile imagenet): " + "; ".join(inet_ours.drop_duplicates(["rf", "margin"]).scale.unique())
                  + " — beside the reported values") if len(inet_ours) else "reported values only (no ImageNet run yet)"
ax_in.set_title("ImageNet — " + imagenet_shown, fontsize=8)
ax_in.grid(alpha=0.3)
ax_in.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
fig.tight_layout()
glue("figure2_scale", scale_label(runs), display=False)
glue("figure2_imagenet", imagenet_shown, display=False)
plt.show()
table = pd.DataFrame({"clean": ours[("clean_accuracy", "3.2")].values,
                      "certified (3.2)": ours[("certified_accuracy", "3.2")].values,
                      "certified (3.3)": ours[("certified_accuracy", "3.3")].values},
                     index=pd.MultiIndex.from_arrays([ours.rf, ours.margin], names=["rf", "margin"]))
readable(table.sort_index())

# %% [markdown]
# Our Derandomized Smoothing runs against the same patch (DS's certificate; block smoothing is
# certified on fewer test images, `n`, because it runs 1,024 forward passes per image):

# %% tags=["hide-input"]
readable(ds.assign(model=[smoothing_label(d) for _, d in ds.iterrows()]).set_index("model")[
    ["n", "clean_accuracy", "certified_accuracy"]])

# %% [markdown]
# Our ImageNet runs (32×32 patches on the val images each was certified on; none until one has
# been trained and certified):

# %% tags=["hide-input"]
readable(inet_ours.set_index(["rf", "margin"])[["n", "clean_accuracy", "certified_3_2", "certified_3_3", "scale"]],
         percent=["clean_accuracy", "certified_3_2", "certified_3_3"],
         words={"certified_3_2": "certified (3.2)", "certified_3_3": "certified (3.3)"})

# %% [markdown]
# Runs on this page trained again to ship their weights (same configuration and seed, later code
# and torch; the replaced run's numbers are in its `previous.json`). The table and figure above
# show the new runs; here is how far each moved (all test images, 5×5, Condition 3.2), beside how
# far the seeds of one configuration spread (Figure 8's Heaviside seeds, RF 7, margin 0.5): each
# point above is one seed.

# %% tags=["hide-input"]
from bagcert_lib.config import grids
from bagcert_lib.results import figure8_query, load_retrained, load_runs, select_runs

again = load_retrained(results).query("run in @runs.run and patch == '5x5' and condition == '3.2'")
if len(again):
    display(readable(again.set_index("run")[["clean_accuracy_before", "clean_accuracy_after",
                                             "certified_accuracy_before", "certified_accuracy_after"]],
                     words={"clean_accuracy_before": "clean before", "clean_accuracy_after": "clean after",
                            "certified_accuracy_before": "certified before",
                            "certified_accuracy_after": "certified after"}))
    moved = (again.certified_accuracy_after - again.certified_accuracy_before).abs().max() * 100
    f8 = grids()["figure8"]
    seed_runs = select_runs(load_runs(results), runs.profile.iloc[0]).query(figure8_query() + " and head == 'heaviside'")
    seeds = load_certification(results).query("run in @seed_runs.run and patch == '5x5' and condition == '3.2'")
    line = f"Certified accuracy moved by at most {moved:.1f} points"
    if len(seeds) > 1:
        c = seeds.certified_accuracy * 100
        line += (f"; the {len(seeds)} Heaviside seeds of RF {f8['rf']}, margin {f8['margin']:g} span "
                 f"{c.min():.1f}–{c.max():.1f} % certified (mean {c.mean():.1f} %)")
    print(line + ".")
else:
    print("No run shown on this page has been trained again yet.")

# %% tags=["hide-input"]
run_links(pd.concat([runs, ds_runs, inet_ours]), "figure2.ipynb")
