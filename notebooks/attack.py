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
# # PGD patch attack on one run (App. A.2)
#
# l*, c* are chosen where Condition 3.2 is weakest, then PGD optimises the patch pixels
# (100 steps of 0.025, L_R with M = 1). Adversarial accuracy bounds robust accuracy from above,
# certified accuracy from below (Figure 7); one broken example is kept for Figure 6.

# %% tags=["parameters"]
run_dir: str = None  # a run made by train.ipynb: a path or a name under results/runs (default: the RF 7, M 0.5 run)
n: int = 1000  # test images to attack (class-balanced, fixed); None means all 10,000
patch: int = 5  # square patch size
steps: int = 100  # PGD steps
step_size: float = 0.025  # PGD step size
device: str = None  # cuda | cpu | None (cuda if available)

# %%
from bagcert_lib.runs import attack_run

result = attack_run(run_dir, n=n, patch=patch, steps=steps, step_size=step_size, device=device)
assert result["certified_broken"] == 0, "the attack broke a certified sample: the certificate is unsound"
{k: result[k] for k in ("n", "clean_accuracy", "adversarial_accuracy", "certified_accuracy",
                        "certified_broken", "seconds")}
