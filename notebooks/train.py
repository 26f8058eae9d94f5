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
# # Train one BagCert configuration
#
# One configuration of §3.3's end-to-end training (App. A.1 recipe, scaled by `profile`) into one
# run directory under `results`. Rerunning with the same parameters resumes the run from its last
# epoch instead of starting over. Ends by certifying 5×5 patches on the whole test set.
# `method` ds-block / ds-column trains a Derandomized Smoothing base classifier instead (Levine &
# Feizi, 2020), certified by `certify.ipynb`.

# %% tags=["parameters"]
rf: int = 7  # receptive field of the region scorer: 5, 7, 9, 11 or 13 (App. A.1)
margin: float = 0.5  # train margin M, i.e. 2R / (w_out h_out) (§3.3)
head: str = "heaviside"  # heaviside | sigmoid | softmax (App. A.3)
sigma: float = 0.0  # one-hot penalty weight σ (§3.3)
seed: int = 0  # random seed
profile: str = "auto"  # paper | gpu | cpu | smoke | auto (paper with CUDA, else cpu)
epochs: int = None  # override the profile's number of epochs
width: int = None  # override the profile's width
warmup_epochs: float = None  # override the profile's linear-warmup epochs
train_size: int = None  # override the profile's training-set size
data: str = None  # data location (else $BAGCERT_DATA, else the default locations)
results: str = None  # parent folder of run directories (default: $BAGCERT_RESULTS, else results/runs)
name: str = None  # run directory name (default: derived from the configuration)
device: str = None  # cuda | cuda:1 | cpu (default: cuda if available)
method: str = "bagcert"  # bagcert | ds-block | ds-column (Derandomized Smoothing) | cbn | mask-bn
ablation_size: int = None  # DS: block side / column band width (default 4)
theta: float = None  # DS: vote threshold on the softmax (default 0.3)

# %%
from pathlib import Path

from bagcert_lib.config import profile_config
from bagcert_lib.runs import certify_run, results_dir
from bagcert_lib.train import train

cfg = profile_config(profile, rf=rf, margin=margin, head=head, sigma=sigma, seed=seed,
                     epochs=epochs, width=width, warmup_epochs=warmup_epochs, train_size=train_size,
                     data=data, device=device,
                     method=method, ablation_size=ablation_size, theta=theta)
run_dir = Path(results or results_dir()) / (name or cfg.run_name())
out = train(cfg, run_dir)
out["history"]

# %%
certification = (certify_run(run_dir, patches=[(5, 5)], device=device, filename="certification_5x5.csv")
                 if out["finished"] and not cfg.smoothing else None)
certification
