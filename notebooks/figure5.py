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
# # Figure 5: Condition 3.3 fails where Condition 3.2 succeeds
#
# A 1-D input, two classes, and a real region scorer with kernels 3, 1, 3 (as in Figure 1) followed
# by the Heaviside head. As in the paper, the attacker may only place a one-pixel patch at l = {0};
# R(l) is every output whose receptive field meets it. Condition 3.3 compares Σ Δ with 2 R_max;
# Condition 3.2 replaces the scores in R(l) by the worst case and asks whether the sum stays positive.

# %% tags=["parameters"]
width: int = 10  # length of the 1-D input
seed: int = 0  # first seed of the search for an input where 3.3 fails and 3.2 succeeds

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn as nn

from bagcert_lib.certifier import affected_range
from bagcert_lib.heads import heaviside
from bagcert_lib.model import IDENTITY

# kernels 3, 1, 3; class 0 ("bright") vs class 1 ("dark") from a local average of the input
scorer = nn.Sequential(nn.Conv1d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv1d(2, 2, 1), nn.ReLU(),
                       nn.Conv1d(2, 2, 3, padding=1))
with torch.no_grad():
    scorer[0].weight.copy_(torch.tensor([[[1.0, 1.0, 1.0]], [[-1.0, -1.0, -1.0]]]) / 3)
    scorer[0].bias.copy_(torch.tensor([-0.5, 0.5]))
    scorer[2].weight.copy_(torch.eye(2).view(2, 2, 1))
    scorer[2].bias.zero_()
    w = torch.zeros(2, 2, 3)
    w[:, :, 1] = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    scorer[4].weight.copy_(w)
    scorer[4].bias.zero_()
geo = IDENTITY
for conv in (scorer[0], scorer[2], scorer[4]):
    geo = geo.then_conv(conv.kernel_size[0], conv.stride[0], conv.padding[0])
rf = geo.receptive_field
first, last = affected_range(width, width, 1, rf, 1)
R = np.arange(int(first[0]), int(last[0]) + 1)          # R(l) for l = {0}
label = 0


def conditions(x):
    with torch.no_grad():
        s = heaviside(scorer(x[None, None]))[0].numpy()   # (2 classes, width) in {0, 1}
    delta = s[label] - s[1 - label]
    total = delta.sum()
    worst = delta.copy()
    worst[R] = -1                                        # s^wc: true class 0, other class 1 in R(l)
    return s, delta, total, worst, worst.sum()


for trial in range(seed, seed + 1000):
    x = torch.rand(width, generator=torch.Generator().manual_seed(trial))
    s, delta, total, worst, worst_total = conditions(x)
    if 0 < total <= 2 * len(R) and worst_total > 0:      # 3.3 fails, 3.2 succeeds
        break

# %% [markdown]
# The example found, and both conditions on it (deterministic: `pytest --nbval` compares this output
# with the one stored in the notebook):

# %% tags=["hide-input"]
# NBVAL_CHECK_OUTPUT
{"receptive_field": rf, "R(l)": R.tolist(), "R_max": len(R), "sum_delta": int(total),
 "2_R_max": 2 * len(R), "condition_3_3": bool(total > 2 * len(R)),
 "sum_delta_worst_case": int(worst_total), "condition_3_2": bool(worst_total > 0), "input_seed": trial}

# %% tags=["hide-input"]
fig, axes = plt.subplots(2, 1, figsize=(8, 4.2), sharex=True)
pos = np.arange(width)
for ax, values, title, verdict in (
        (axes[0], delta, f"Condition 3.3: Σ Δ = {int(total)} ≤ 2·R_max = {2 * len(R)}", "not certified"),
        (axes[1], worst, f"Condition 3.2: Σ Δ^wc = {int(worst_total)} > 0", "certified")):
    colors = ["tab:green" if v > 0 else "tab:red" if v < 0 else "0.7" for v in values]
    ax.bar(pos, values, color=colors)
    ax.axvspan(R[0] - 0.5, R[-1] + 0.5, color="k", alpha=0.08, label="R(l), l = {0}")
    ax.set_ylim(-1.3, 1.3)
    ax.set_ylabel("Δ = s_true − s_other")
    ax.set_title(f"{title}: {verdict}", fontsize=10)
axes[0].legend(loc="lower center", fontsize=8)
axes[1].set_xlabel("output position (1-D region scores; input pixel l = 0 is patched)")
fig.suptitle(f"1-D region scorer, kernels 3-1-3 (receptive field {rf}), two classes", fontsize=11)
fig.tight_layout()
