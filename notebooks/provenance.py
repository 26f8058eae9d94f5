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
# # Provenance
#
# Where every number in the figures comes from: the machine each run trained on, the commit of the
# code that trained it, how long training, certification and the attack took, and which runs were
# trained again to ship their weights. Everything here is read from the run folders
# (`provenance.json`, `certification.csv`, `attack.json`, `previous.json`); the figure pages say in
# one line what they were made from and link here.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)

# %% tags=["hide-input"]
import pandas as pd

from bagcert_lib.figures import readable
from bagcert_lib.results import load_retrained, load_runs, run_links

pd.set_option("display.max_colwidth", None)     # machine strings in full
runs = load_runs(results)
done = runs[runs.finished.fillna(False).astype(bool)].copy() if len(runs) else runs
done["device"] = done.device.fillna("not recorded")
machines = (done.groupby("device", sort=False)
            .agg(runs=("run", "size"), profiles=("profile", lambda p: ", ".join(sorted(set(map(str, p))))))
            .reset_index())
machines.index = [f"M{i + 1}" for i in range(len(machines))]
machines.index.name = "machine"
key = dict(zip(machines.device, machines.index))

# %% [markdown]
# ## Machines
#
# Each machine as the run's `provenance.json` names it (CPU model and threads, or the GPU; a run
# resumed on other machines lists every one, with the CPU's instruction-set class):

# %% tags=["hide-input"]
readable(machines.rename(columns={"device": "trained on"}))

# %% [markdown]
# ## Runs: machine, commit and time
#
# One row per finished run: the machine it trained on (above), the commit that trained it, and
# the wall time of each step on that machine (hours on different machines do not compare; the
# figures compare runs by training FLOPs instead).

# %% tags=["hide-input"]
per_run = done.assign(machine=done.device.map(key), commit=done.commit.fillna("").str[:7],
                      training_h=done.wall_s / 3600, certify_min=done.certify_wall_s / 60,
                      attack_min=done.attack_wall_s / 60)
per_run = per_run.sort_values(["profile", "run"]).set_index("run")[
    ["machine", "commit", "training_h", "certify_min", "attack_min"]]
readable(per_run, formats={"training_h": "{:.2f}", "certify_min": "{:.1f}", "attack_min": "{:.1f}"},
         words={"training_h": "training (h)", "certify_min": "certification (min)", "attack_min": "attack (min)"})

# %% [markdown]
# ## Runs trained again to ship their weights
#
# Runs committed before models were shipped were trained again (same configuration and seed,
# later code and torch; `python -m bagcert_lib.sweep --retrain-unshipped`). The replaced run's
# numbers are kept in its `previous.json`; the figures show the new runs. How far each moved on the
# test set (5 × 5, Condition 3.2), beside how far the five Heaviside seeds of RF 7, M 0.5 spread
# (Figure 8), then the code each was made with:

# %% tags=["hide-input"]
again = load_retrained(results).query("patch == '5x5' and condition == '3.2'")
if (again.profile != "smoke").any():   # smoke runs only exercise the pipeline
    again = again.query("profile != 'smoke'")
if len(again):
    moved = again.set_index("run")[["clean_accuracy_before", "clean_accuracy_after",
                                    "certified_accuracy_before", "certified_accuracy_after"]]
    display(readable(moved, words={"clean_accuracy_before": "clean before", "clean_accuracy_after": "clean after",
                                   "certified_accuracy_before": "certified before",
                                   "certified_accuracy_after": "certified after"}))
    shift = (again.certified_accuracy_after - again.certified_accuracy_before).abs() * 100
    line = f"Certified accuracy moved by at most {shift.max():.1f} points (median {shift.median():.1f})"
    from bagcert_lib.results import figure8_query, load_certification
    seed_runs = runs.query(figure8_query() + " and head == 'heaviside'")
    seed_runs = seed_runs[seed_runs.profile == again.profile.mode().iloc[0]]
    seeds = load_certification(results).query("run in @seed_runs.run and patch == '5x5' and condition == '3.2'")
    if len(seeds) > 1:
        c = seeds.certified_accuracy * 100
        line += (f"; the {len(seeds)} Heaviside seeds of RF 7, M 0.5 (profile {again.profile.mode().iloc[0]}) "
                 f"span {c.min():.1f}–{c.max():.1f} % certified")
    print(line + ".")
    code = again.set_index("run").assign(
        before=lambda d: d.commit_before.fillna("").str[:7] + ", torch " + d.torch_before.fillna("?"),
        after=lambda d: d.commit_after.fillna("").str[:7] + ", torch " + d.torch_after.fillna("?"))
    display(readable(code[["before", "after"]], words={"before": "before: commit, torch",
                                                      "after": "after: commit, torch"}))
else:
    print("No run has been trained again.")

# %% [markdown]
# ## The runs behind each figure page

# %% tags=["hide-input"]
from IPython.display import HTML

from bagcert_lib.config import grids
from bagcert_lib.figures import shipped_run
from bagcert_lib.results import grid_runs, headline_runs, smoothing_runs

grid = grid_runs(results)
ds_runs = smoothing_runs(results, grid.profile.iloc[0] if len(grid) else None)
ship = shipped_run(results)
ship_runs = runs[runs.run == ship.run] if ship is not None else runs.iloc[:0]
headline = headline_runs(done)
pages = {"figure2": [grid, ds_runs, ship_runs], "figure3": [grid, ds_runs, ship_runs],
         "figure4": [grid, ds_runs, ship_runs], "headline": [headline]}
html = []
for page, parts in pages.items():
    shown = pd.concat(parts).drop_duplicates("run")
    html.append(f"<h3>{page}</h3>" + run_links(shown, f"{page}.ipynb").data)
HTML("".join(html))
