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
# # Figure 2: clean versus certified accuracy
#
# *Clean versus certified accuracy on CIFAR10 and ImageNet for BagCert with different receptive fields
# and train margins when certifying via Condition 3.3 (circles) and Condition 3.2 (stars), same
# setting connected by thin line.* Filled markers are ours, measured here: every Heaviside run of
# the grid (seed 0, σ 0) against 5 × 5 patches on the test set, our strongest shipped model, and
# our Derandomized Smoothing (DS) runs {cite}`levine2020derandomized` (block and column smoothing,
# trained and certified by `bagcert_lib.smoothing`; crosses). Hollow markers are not ours: red, the
# paper's own BagCert model {cite}`metzen2021bagcert` (86 % clean and 60 % certified for RF 7,
# M 0.5 under Condition 3.2, Abstract and §4; Condition 3.3 about 3 points lower, §4;
# `results/paper/figures.csv`); grey, the baselines as their papers report them
# (`results/baselines/baselines.csv`, each with its source): IBP {cite}`chiang2020certified`,
# DS {cite}`levine2020derandomized`, PatchGuard's Mask-BN and Mask-DS {cite}`xiang2020patchguard`
# and Clipped BagNet (CBN) {cite}`zhang2020clipped`; values we could not source are left out.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs
patch: str = "5x5"  # patch shape of the CIFAR-10 panel, width x height

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.lines import Line2D
from IPython.display import Markdown
from myst_nb import glue

from bagcert_lib.config import REPO_ROOT
from bagcert_lib.figures import (FIG_WIDTH, PAPER_COLOR, REPORTED_COLOR, REPORTED_MARKERS, SHIPPED_COLOR,
                                 baselines_at_our_scale, book_style, flops_text, made_from, paper_values,
                                 readable, reported_baselines, shipped_run, smoothing_label)
from bagcert_lib.results import grid_runs, imagenet_runs, load_certification, smoothing_runs

book_style()
runs = grid_runs(results, profile)
ds_runs = smoothing_runs(results, runs.profile.iloc[0] if len(runs) else profile)
every = load_certification(results)
cert = every.query("patch == @patch and run in @runs.run")
ds = every.query("patch == @patch and condition == 'DS' and run in @ds_runs.run")
ship = shipped_run(results)
ship_cert = every.query("patch == @patch and run == @ship.run") if ship is not None else every.iloc[:0]


def wide(c):
    """(run, rf, margin) -> clean, certified 3.2 and 3.3 side by side."""
    if c.empty:
        return pd.DataFrame(columns=["run", "rf", "margin", "clean", "c32", "c33"])
    w = c.pivot_table(index=["run", "rf", "margin"], columns="condition", values="certified_accuracy")
    w["clean"] = c.groupby(["run", "rf", "margin"]).clean_accuracy.first()
    return w.rename(columns={"3.2": "c32", "3.3": "c33"}).reset_index()


ours = wide(cert)
fig, ax = plt.subplots(figsize=(FIG_WIDTH, 10), layout="constrained")
cmap = plt.get_cmap("viridis")
for _, r in ours.iterrows():
    color = cmap((r.rf - 5) / 8 * 0.9)
    ax.plot([r.clean * 100] * 2, [r.c33 * 100, r.c32 * 100], color=color, lw=0.8)
    ax.scatter(r.clean * 100, r.c33 * 100, marker="o", color=color, s=45)
    ax.scatter(r.clean * 100, r.c32 * 100, marker="*", color=color, s=140)
handles = [Line2D([], [], ls="", marker="s", ms=9, color=cmap((rf - 5) / 8 * 0.9), label=f"BagCert RF {rf} (ours)")
           for rf in sorted(ours.rf.unique())]
if len(ship_cert) and ship.run not in set(runs.run):
    s = wide(ship_cert).iloc[0]
    ax.plot([s.clean * 100] * 2, [s.c33 * 100, s.c32 * 100], color=SHIPPED_COLOR, lw=0.8)
    ax.scatter(s.clean * 100, s.c33 * 100, marker="o", color=SHIPPED_COLOR, s=45)
    ax.scatter(s.clean * 100, s.c32 * 100, marker="*", color=SHIPPED_COLOR, s=140)
    handles.append(Line2D([], [], ls="", marker="s", ms=9, color=SHIPPED_COLOR,
                          label=f"strongest shipped: RF {ship.rf}, M {ship.margin:g}, width {ship.width}, "
                                f"{ship.epochs} epochs (ours)"))
for marker, (_, d) in zip("XP", ds.iterrows()):
    ax.scatter(d.clean_accuracy * 100, d.certified_accuracy * 100, marker=marker, color="tab:orange", s=130,
               edgecolors="black", linewidths=0.5)
    handles.append(Line2D([], [], ls="", marker=marker, ms=11, color="tab:orange", markeredgecolor="black",
                          label=f"{smoothing_label(d)} (ours, {d.n:,} images)"))
for _, p in paper_values("figure2").iterrows():
    star = p.condition == "3.2"
    ax.scatter(p.clean_accuracy * 100, p.certified_accuracy * 100, marker="*" if star else "o",
               s=300 if star else 110, facecolors="none", edgecolors=PAPER_COLOR, linewidths=2, zorder=5)
    handles.append(Line2D([], [], ls="", marker="*" if star else "o", ms=16 if star else 10, markerfacecolor="none",
                          markeredgecolor=PAPER_COLOR, markeredgewidth=2,
                          label=f"paper: RF {p.rf:g}, M {p.margin:g}, Condition {p.condition} "
                                f"({'Abstract, §4' if star else '≈ 3 points below, §4'})"))
for _, b in reported_baselines("CIFAR-10", patch).iterrows():
    m = REPORTED_MARKERS.get(b.method, "o")
    ax.scatter(b.clean_accuracy * 100, b.certified_accuracy * 100, marker=m, s=110, facecolors="none",
               edgecolors=REPORTED_COLOR, linewidths=2, zorder=5)
    handles.append(Line2D([], [], ls="", marker=m, ms=10, markerfacecolor="none", markeredgecolor=REPORTED_COLOR,
                          markeredgewidth=2, label=f"{b.method} (reported by its paper)"))
handles += [Line2D([], [], ls="", marker="*", ms=13, color="0.5", label="Condition 3.2"),
            Line2D([], [], ls="", marker="o", ms=8, color="0.5", label="Condition 3.3")]
ax.set_xlabel("Clean accuracy (%)")
ax.set_ylabel(f"Certified accuracy (%), {patch.replace('x', '×')}")
ax.set_title(f"CIFAR-10, {patch.replace('x', '×')} patches")
ax.grid(alpha=0.3)
fig.legend(handles=handles, loc="outside lower center", ncol=1)
glue("figure2_made_from", Markdown(made_from(pd.concat([runs, ds_runs]))), display=False)
glue("figure2_baselines", Markdown(baselines_at_our_scale(results, profile, "3.2", patch)["sentence"] or
                                   "No run of the grid has been certified yet."), display=False)
plt.show()

# %% [markdown]
# {glue:md}`figure2_baselines`
#
# Made from {glue:md}`figure2_made_from`. Machines, commits, timings and the run folders:
# {doc}`provenance`.
#
# Our runs against the same patch, certified on the test set (BagCert per receptive field and
# margin M, then DS {cite}`levine2020derandomized` under its own certificate, each with the test
# images it was certified on):

# %% tags=["hide-input"]
table = ours.sort_values(["rf", "margin"]).set_index("run")[["rf", "margin", "clean", "c32", "c33"]]
table.index = [f"RF {r.rf}, M {r.margin:g}" for r in table.itertuples()]
dst = pd.DataFrame({"clean": ds.clean_accuracy.values, "c32": ds.certified_accuracy.values},
                   index=[f"{smoothing_label(d)} ({d.n:,} images)" for _, d in ds.iterrows()])
table = pd.concat([table.drop(columns=["rf", "margin"]), dst])
table.index.name = "model"
readable(table, percent=["clean", "c32", "c33"],
         words={"c32": "certified, Condition 3.2 (DS: its own)", "c33": "certified, Condition 3.3"})

# %% [markdown]
# ## ImageNet
#
# Against 2 % patches (32 × 32 at 224 px), the paper's RF 17, M 0.25 model certifies 18.9 % under
# Condition 3.3 and 22.9 % under Condition 3.2 (§4; clean accuracy not stated, so drawn as lines;
# `results/paper/figure2_imagenet.csv`), beside the baselines as reported (grey, hollow) — our
# ImageNet runs (profile `imagenet`, App. A.1.2: RF 17/25/29) are drawn filled when the results
# folder holds any: {glue:text}`figure2_imagenet`.

# %% tags=["hide-input"]
imagenet_paper = pd.read_csv(REPO_ROOT / "results" / "paper" / "figure2_imagenet.csv", dtype={"condition": str})
inet_ours = imagenet_runs(results)   # empty until an ImageNet run is finished and certified
fig, ax_in = plt.subplots(figsize=(FIG_WIDTH, 8.5), layout="constrained")
inet = pd.read_csv(REPO_ROOT / "results" / "baselines" / "baselines.csv").query("dataset == 'ImageNet'")
for method, b in inet.groupby("method", sort=False):
    ax_in.scatter(b.clean_accuracy * 100, b.certified_accuracy * 100, marker=REPORTED_MARKERS.get(method, "o"),
                  s=110, facecolors="none", edgecolors=REPORTED_COLOR, linewidths=2,
                  label=f"{method} (reported)")
for _, p in imagenet_paper.iterrows():
    ax_in.axhline(p.certified_accuracy * 100, color=PAPER_COLOR, ls="--" if p.condition == "3.3" else "-", lw=1.5,
                  label=f"paper: RF {p.rf}, M {p.margin:g}, Condition {p.condition} (§4)")
for _, r in inet_ours.iterrows():     # ours, as the CIFAR panel: 3.3 circles, 3.2 stars
    color = cmap((r.rf - 17) / 12)
    clean, c32, c33 = r.clean_accuracy * 100, r.certified_3_2 * 100, r.certified_3_3 * 100
    ax_in.plot([clean, clean], [c33, c32], color=color, lw=0.8)
    ax_in.scatter(clean, c33, marker="o", color=color, s=45)
    ax_in.scatter(clean, c32, marker="*", color=color, s=140)
for (rf, margin), _ in inet_ours.groupby(["rf", "margin"]):
    ax_in.scatter([], [], marker="s", color=cmap((rf - 17) / 12), label=f"BagCert RF {rf}, M {margin:g} (ours)")
ax_in.set_xlabel("Clean accuracy (%)")
ax_in.set_ylabel("Certified accuracy (%), 2 % patch")
ax_in.set_title("ImageNet, 2 % patches (32 × 32 at 224 px)")
ax_in.grid(alpha=0.3)
fig.legend(loc="outside lower center", ncol=1)
imagenet_shown = ("ours (profile imagenet): " + "; ".join(inet_ours.drop_duplicates(["rf", "margin"]).scale.unique())
                  if len(inet_ours) else "none yet, so the panel shows the paper's and the reported values only")
glue("figure2_imagenet", imagenet_shown, display=False)
plt.show()

# %% tags=["hide-input"]
if len(inet_ours):
    display(readable(inet_ours.set_index(["rf", "margin"])[["n", "clean_accuracy", "certified_3_2", "certified_3_3"]],
                     percent=["clean_accuracy", "certified_3_2", "certified_3_3"],
                     words={"certified_3_2": "certified (3.2)", "certified_3_3": "certified (3.3)"}))
