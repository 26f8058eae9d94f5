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
# # Figure 6: an adversarial patch and its effect on the region scores
#
# *Top row: the clean image, the score maps for the true class and for the chosen target class.
# Bottom row: the same for the image with an adversarial 5×5 patch inserted at the chosen region l.
# The red rectangle corresponds to R(l).* The example is the first sample the App. A.2 attack broke
# on the run (or its first sample if none broke), saved by `attack.ipynb` as `attack_example.npz`.

# %% tags=["parameters"]
run_dir: str = None  # a run directory with attack_example.npz (default: the headline RF 7, M 0.5 run)
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
profile: str = None  # runs to choose from; None: the first of paper, cpu, gpu, smoke with finished runs

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from bagcert_lib.data import CIFAR10_CLASSES
from bagcert_lib.results import headline_run, load_runs, run_links, scale_label

run = headline_run(results, profile, run_dir, needs="attack_example.npz")
e = np.load(run / "attack_example.npz")
label, target = int(e["label"]), int(e["target"])
(ph, pw), (row, col) = e["patch"], (int(e["row"]), int(e["col"]))
r0, r1, c0, c1 = e["region"]
names = CIFAR10_CLASSES if label < 10 and target < 10 else [str(i) for i in range(max(label, target) + 1)]
fig, axes = plt.subplots(2, 3, figsize=(9, 6))
for i, (image, title) in enumerate(((e["clean"], "Clean image"), (e["adversarial"], "Adversarial image"))):
    axes[i, 0].imshow(np.transpose(image, (1, 2, 0)))
    axes[i, 0].set_title(title, fontsize=9)
    if i == 1:
        axes[i, 0].add_patch(Rectangle((col - 0.5, row - 0.5), pw, ph, fill=False, ec="yellow", lw=1.5))
    for j, (maps, cls) in enumerate(((e["scores_true"], label), (e["scores_target"], target)), start=1):
        axes[i, j].imshow(maps[i], cmap="gray", vmin=0, vmax=1)
        axes[i, j].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False,
                                       ec="red", lw=1.5))
        kind = "True class" if j == 1 else "Target class"
        axes[i, j].set_title(f"Region scores ({kind}: {names[cls]})\nsum = {maps[i].sum():.0f}", fontsize=9)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
fig.tight_layout()
plt.show()
{"run": run.name, "label": names[label], "target": names[target], "patch at (row, col)": (row, col),
 "flipped": bool(e["flipped"]), "R(l) rows": (int(r0), int(r1)), "R(l) cols": (int(c0), int(c1))}

# %% tags=["hide-input"]
shown = load_runs(run.parent).query("run == @run.name")
print(scale_label(shown))
run_links(shown, "figure6.ipynb")
