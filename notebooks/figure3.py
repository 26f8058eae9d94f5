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
# # Figure 3: certified accuracy for square patches 1×1 … 16×16
#
# *Certified accuracy against square patches of different sizes on CIFAR10* (Condition 3.2), for different receptive fields (left, M = 0.5) and train margins
# (right, RF 7). Each line is one model, certified against every patch shape from one forward pass
# (`certification.csv` of each run). Reads only the results folder.

# %% tags=["parameters"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
condition: str = "3.2"  # certification condition: 3.2 or 3.3

# %%
from bagcert_lib.config import grids
from bagcert_lib.figures import sweep_panels
from bagcert_lib.results import load_certification, load_runs, scale_label

runs, cert = load_runs(results), load_certification(results)
patches = [(p, p) for p in grids()["square_patches"]]
fig = sweep_panels(cert, patches, condition, title=scale_label(runs))
cert.query("condition == @condition").pivot_table(
    index="run", columns="patch", values="certified_accuracy", sort=False)[[f"{h}x{w}" for h, w in patches]].round(3)
