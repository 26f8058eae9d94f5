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
# # Table 1: certification time and number of parameters
#
# *Certification time for 10.000 CIFAR10 test examples and number of model parameters.* Ours: the
# forward pass plus the 5×5 certification of each run's test images (`certification.csv`), on the
# machine named in the table, and parameter counts of the models we trained and of the paper's
# width-768 models (counted by building them). The paper's values (Tesla V100) come from
# `results/paper/table1.csv`.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to show; None: the first of paper, cpu, gpu, smoke with finished runs

# %% tags=["hide-input"]

import pandas as pd
from myst_nb import glue

from bagcert_lib.config import REPO_ROOT, grids
from bagcert_lib.model import cifar_scorer, num_parameters
from bagcert_lib.results import grid_runs, load_certification, load_runs, run_links

paper = pd.read_csv(REPO_ROOT / "results" / "paper" / "table1.csv")
runs = grid_runs(results, profile)
cert = load_certification(results).query("patch == '5x5' and condition == '3.2' and run in @runs.run")
cert = cert.assign(seconds=cert.forward_s + cert.certify_s)
ours = (cert.drop(columns=["device"], errors="ignore").merge(runs[["run", "parameters", "device"]], on="run")
        .groupby("rf").agg(n=("n", "first"), seconds=("seconds", "median"),
                          forward_s=("forward_s", "median"), certify_s=("certify_s", "median"),
                          parameters=("parameters", "first"), width=("width", "first"),
                          device=("device", "first")))
table = pd.DataFrame({"rf": grids()["receptive_fields"]}).set_index("rf")
table["paper: seconds (V100, 10,000 images)"] = paper.dropna(subset=["rf"]).set_index("rf").certification_seconds
table["paper: parameters (M)"] = paper.dropna(subset=["rf"]).set_index("rf").parameters_millions
table["ours: parameters at width 768 (M)"] = [round(num_parameters(cifar_scorer(rf, 768)) / 1e6, 1)
                                              for rf in table.index]

# %% [markdown]
# Parameter counts, the paper's and those of the paper's width-768 models as we build them
# (deterministic: `pytest --nbval` compares this output with the one stored in the notebook):

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
table

# %% [markdown]
# Our runs beside them: certification time for the test images (forward pass + 5×5 certificate,
# median over the runs of each RF) on the machine named, and our models' parameter counts:

# %% tags=["hide-input"]
table.join(ours.rename(columns=lambda c: f"ours: {c}")).round(2)

# %% [markdown]
# Derandomized smoothing as reported by the paper (block and column smoothing):

# %% tags=["hide-input"]
paper[paper.method != "BagCert"][["method", "certification_seconds", "parameters_millions", "hardware"]]

# %% tags=["hide-input"]
run_links(runs, "table1.ipynb")

# %% [markdown]
# Compute behind every finished run in the results folder, per profile and machine (training wall
# time from each run's `provenance.json`; certification and attacks not included):

# %% tags=["hide-input"]
every = load_runs(results)
every = every[every.finished.fillna(False).astype(bool)]
compute = every.groupby(["profile", "device"]).agg(
    runs=("run", "count"), width=("width", "first"), epochs=("epochs", "first"),
    seconds_per_epoch=("seconds_per_epoch", "median"),
    training_hours=("wall_s", lambda s: s.sum() / 3600)).round(2)
glue("compute", compute)
