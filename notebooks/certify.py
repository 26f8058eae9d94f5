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
# # Certify one trained run (§3.1)
#
# Certified accuracy under Condition 3.2 (per region, summed-area tables) and Condition 3.3
# (global) for square patches 1×1 … 16×16 (Figure 3) and every h×w with h·w = 24 (Figure 4), all
# from one forward pass per batch over the run's test images (its `test_size`: the whole test set
# unless its profile caps it; `test_size="all"` lifts the cap). Writes `certification.csv` into the run.

# %% tags=["parameters"]
run_dir: str = None  # a run made by train.ipynb: a path or a name under results/runs (default: the RF 7, M 0.5 run)
device: str = None  # cuda | cpu | None (cuda if available)
test_size: str = None  # test images: None (the run's test_size), all (the whole split) or a number
compile: bool = None  # torch.compile the model: None (as the run was trained), True or False; numerically a different model
chunk: int = None  # save the certification every this many test images (None: 500); run again to resume a killed one

# %%
from bagcert_lib.runs import certify_run

df = certify_run(run_dir, device=device, test_size=test_size, compile=compile, chunk=chunk)
df.pivot_table(index="patch", columns="condition", values="certified_accuracy", sort=False)

# %% [markdown]
# Certification time for these test images next to the plain inference (forward pass) time:

# %%
{"forward_s": df.attrs["forward_s"], "certify_s": df.attrs["certify_s"], "n": df.attrs["n"],
 "patch_shapes": df.patch.nunique()}
