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
# # Accuracy against training compute
#
# Is the gap between our CPU runs and the paper's 86 % clean / 60 % certified (RF 7, M 0.5, 5×5)
# only compute, or does the implementation fall short? Every run at the headline setting (RF 7,
# M 0.5, Heaviside head, σ 0, the full training set, Adam with the paper's cosine schedule) is
# placed at its training compute: multiply-accumulates of every convolution per image, counted from
# the model by `bagcert_lib.model.conv_macs`, × 2 FLOPs, × 3 for forward and backward, × the images
# seen. Accuracies are on the whole CIFAR-10 test set (JPEG copy), 5×5 patches. Three curve forms
# are fitted by least squares to every run (seeds as separate points) and bootstrapped over runs
# (`bagcert_lib.scaling`).

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
n_boot: int = 1000  # bootstrap resamples per fit

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from myst_nb import glue

from bagcert_lib import scaling
from bagcert_lib.results import run_links

study = scaling.study_runs(results)
paper_c = scaling.paper_flops()
METRICS = {"clean": "Clean accuracy", "certified": "Certified, Condition 3.2",
           "certified_global": "Certified, Condition 3.3"}
PAPER = {"clean": scaling.PAPER["clean"], "certified": scaling.PAPER["certified"]}
fits = pd.concat([scaling.predict(study, m, paper_c, n_boot) for m in METRICS]) if len(study) else pd.DataFrame()
fittable = len(fits) > 0
print(f"{len(study)} runs, {study.flops.nunique() if len(study) else 0} distinct computes; "
      f"the paper's run: {paper_c:.2e} FLOPs")

# %% tags=["hide-input"]
fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), sharex=True)
grid = np.linspace(np.log10(study.flops.min()) - 0.2 if len(study) else 13, np.log10(paper_c) + 0.2, 200)
for ax, (metric, name) in zip(axes, METRICS.items()):
    for (w, e), g in study.groupby(["width", "epochs"]):
        y = g[metric] * 100
        ax.errorbar(g.flops.iloc[0], y.mean(), yerr=[[y.mean() - y.min()], [y.max() - y.mean()]],
                    fmt="o", ms=5, capsize=3, label=f"width {w}, {e} epochs" + (f" ({len(g)} seeds)" if len(g) > 1 else ""))
    if fittable:
        x, yv = np.log10(study.flops), study[metric]
        ok = yv.notna()
        band = scaling.bootstrap(x[ok], yv[ok], grid, "saturating", n_boot) * 100
        p = scaling.fit(x[ok], yv[ok], "saturating")
        ax.plot(10 ** grid, scaling.evaluate(p, grid) * 100, color="k", lw=1, label="saturating fit")
        ax.fill_between(10 ** grid, *np.quantile(band, [0.025, 0.975], axis=0), color="k", alpha=0.12,
                        label="95 % bootstrap band")
    if metric in PAPER:
        ax.plot(paper_c, PAPER[metric] * 100, "r*", ms=12, label="paper (width 768, 350 epochs)")
    ax.axvspan(study.flops.max() if len(study) else paper_c, paper_c, color="orange", alpha=0.07)
    ax.set_xscale("log")
    ax.set_xlabel("Training compute (FLOPs)")
    ax.set_ylabel(f"{name} (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"{name}, 5×5 patches", fontsize=10)
axes[0].legend(fontsize=7, loc="upper left")
fig.suptitle("RF 7, M 0.5: test-set accuracy against training compute (shaded orange: extrapolation)", fontsize=10)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## What the trend predicts at the paper's compute
#
# Each form's prediction at the paper's training compute, with the 95 % band of 1,000 bootstrap
# refits (runs resampled with replacement). **This is an extrapolation**, beyond our largest run by
# the number of decades printed below; the forms agree inside our runs and part ways beyond them,
# which is how sensitive the prediction is to the curve's form.

# %% tags=["hide-input"]
if fittable:
    span = scaling.decades(study, paper_c)
    table = fits.assign(metric=fits.metric.map(METRICS),
                        paper=fits.metric.map(lambda m: PAPER.get(m, np.nan)))
    main = fits.query("form == 'saturating'").set_index("metric")
    inside = {m: bool(main.loc[m, "low"] <= PAPER[m] <= main.loc[m, "high"]) for m in PAPER}
    glue("scaling_decades", f"{span:.1f}", display=False)
    glue("scaling_runs", f"{len(study)}", display=False)
    for m in PAPER:
        r = main.loc[m]
        glue(f"scaling_{m}", f"{r.prediction * 100:.1f}% (95% band {r.low * 100:.1f}–{r.high * 100:.1f}%)",
             display=False)
    print(f"The paper's compute is {span:.1f} decades beyond our largest run "
          f"({study.flops.max():.2e} vs {paper_c:.2e} FLOPs).")
    for m in PAPER:
        r = main.loc[m]
        print(f"{METRICS[m]}: predicted {r.prediction:.1%} (band {r.low:.1%}–{r.high:.1%}), paper "
              f"{PAPER[m]:.0%}: {'inside' if inside[m] else 'outside'} our band.")
    shown = table.rename(columns={"metric": "accuracy", "form": "curve form", "prediction": "predicted",
                                  "low": "band low (2.5 %)", "high": "band high (97.5 %)",
                                  "rmse": "fit error (RMSE)", "asymptote": "asymptote", "paper": "paper"})
    display(shown.style.format({c: "{:.1%}" for c in shown.columns if c not in ("accuracy", "curve form")},
                               na_rep="—").hide(axis="index"))
else:
    print("Fewer than three distinct computes have finished runs: no fit yet.")

# %% [markdown]
# ## The runs
#
# Every run of the study, with its compute, the hours it trained and the machine it ran on (CPU
# runs: one thread each; CPU class as in the README: "mixed" when a run was resumed on another
# class, whose hours then add up epochs of different speeds; "cuda" for a run trained on a lent
# GPU, whose hours do not compare with the CPUs'). Width 32 at 6 epochs is Figure 8's five Heaviside seeds: their spread is the
# run-to-run noise drawn as error bars above. 10×10 and the smallest 24-pixel aspect-ratio patch
# show whether the claims that do not hold at our scale start to hold as compute grows.

# %% tags=["hide-input"]
cols = {"run": "run", "width": "width", "epochs": "epochs", "seed": "seed", "flops": "training FLOPs",
        "wall_h": "training hours", "device": "machine", "cpu_class": "CPU class", "clean": "clean",
        "certified": "certified 5×5 (3.2)", "certified_global": "certified 5×5 (3.3)",
        "certified_10x10": "certified 10×10 (3.2)", "certified_aspect_min": "certified, worst 24-pixel aspect ratio (3.2)"}
view = study[list(cols)].rename(columns=cols)
pct = [c for c in view.columns if c.startswith(("clean", "certified"))]
view.style.format({**{c: "{:.1%}" for c in pct}, "training FLOPs": "{:.2e}", "training hours": "{:.2f}"},
                  na_rep="—").hide(axis="index")

# %% tags=["hide-input"]
run_links(study, "scaling.ipynb")

# %% [markdown]
# ## Runs still training
#
# Runs of the study that have not finished yet, and where they stand. A run's curve is its
# accuracy on the fixed held-out set (1,000 test images, `history.csv`) after each epoch, at the
# training compute spent by then; the points above are each run's *final* accuracy on the whole
# test set. A point inside a run is not what a run of that compute ends at: its learning rate has
# not yet decayed to zero (cosine schedule). These runs join the fit when they finish. The hours
# to go are the mean of the last three epochs times the epochs left, on the CPU class that ran
# those epochs: the other class trains at another pace (width 64 on one core: about 45 min an
# epoch on AVX2, 12–16 min on AVX512-BF16).

# %% tags=["hide-input"]
curves = scaling.learning_curves(results)
training = scaling.runs_in_progress(results)
if len(training):
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for ax, (metric, name) in zip(axes, [("clean", "Clean"), ("certified", "Certified 5×5 (3.2)")]):
        for _, g in curves.groupby(["width", "epochs", "run"]):
            r = g.iloc[0]
            if r.seed != 0:
                continue                    # one seed of Figure 8's five
            live = not r.finished
            ax.plot(g.flops, g[metric] * 100, "-" if live else ":", lw=2 if live else 1,
                    label=f"width {r.width}, {r.epochs} epochs" + (f" (training: {len(g)}/{r.epochs})" if live else ""))
        ax.set_xscale("log")
        ax.set_xlabel("Training compute so far (FLOPs)")
        ax.set_ylabel(f"{name}, held-out (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Learning curves on the held-out set: solid, still training; dotted, finished", fontsize=10)
    fig.tight_layout()
    plt.show()
    cols = {"run": "run", "epochs_done": "epochs done", "epochs": "of", "flops": "FLOPs so far",
            "planned_flops": "FLOPs planned", "clean": "clean (held-out)",
            "certified": "certified 5×5 (held-out)", "wall_h": "training hours so far", "cpu_class": "CPU class",
            "to_go_h": f"hours to go (pace of the last {scaling.PACE_EPOCHS} epochs)",
            "pace_cpu_class": "pace measured on"}
    display(training[list(cols)].rename(columns=cols).style.format(
        {"FLOPs so far": "{:.2e}", "FLOPs planned": "{:.2e}", "clean (held-out)": "{:.1%}",
         "certified 5×5 (held-out)": "{:.1%}", "training hours so far": "{:.1f}",
         cols["to_go_h"]: "{:.1f}"}, na_rep="—").hide(axis="index"))
else:
    print("Every run of the study has finished.")
