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
# # Certify your own images
#
# The shipped headline model (RF 7, M 0.5, Heaviside head, σ 0: the run with the most training
# compute that ships `model.safetensors`) certifies a few CIFAR-10 test images and any folder of
# your own pictures against square patches of 1×1 to 10×10 pixels anywhere in the image
# (Condition 3.2, §3.1). Each row shows, left to right: the image with the weakest patch position
# l* (yellow), the region scores of the true class (of the predicted class, for your unlabelled
# pictures) and of the strongest other class c*, with the affected region R(l*) (red), the outputs
# whose receptive field meets the patch; beside them, the numbers: the largest patch size still
# certified, and the sums behind the certificate at the first size that fails.
#
# Your own images: `papermill notebooks/certify_images.ipynb out.ipynb -p images path/to/folder`
# (any size: each is scaled and centre-cropped to 32×32). A picture inside a sub-folder named after
# a CIFAR-10 class (`folder/cat/x.jpg`) is certified for that class; any other is certified for the
# class the model predicts. Any mode becomes 8-bit RGB (`bagcert_lib.data.folders.to_rgb`): 16-bit
# grayscale is scaled by its depth, palette images go through their palette, CMYK through its ICC
# profile, and transparent pixels are composited on white. A file that cannot be decoded (e.g. a
# truncated JPEG) is named and skipped, the others are certified, and the end of the page lists
# what was skipped. The weights are read with `bagcert_lib.load_pretrained`: safetensors only,
# nothing is unpickled.

# %% tags=["parameters"]
run: str = None  # a run name or folder with model.safetensors (default: the shipped headline model)
images: str = None  # a folder of your own images (any size, resized to 32×32); None: test images only
n_test: int = 6  # CIFAR-10 test images to certify (0: none)
patch_sizes: list = list(range(1, 11))  # square patch sizes to certify against
device: str = None  # cpu, cuda, ... (default: cpu)

# %% tags=["hide-input"]
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display
from matplotlib.patches import Rectangle

from bagcert_lib import load_pretrained
from bagcert_lib.certifier import ScoreMaps, affected_range
from bagcert_lib.data import CIFAR10_CLASSES, load_dataset, subset
from bagcert_lib.data.folders import load_own_images
from bagcert_lib.figures import readable
from bagcert_lib.results import shipped_headline
from bagcert_lib.runtime import region_scores

try:
    run_dir = Path(run) if run else shipped_headline()
    model, cfg = load_pretrained(run_dir, device)
except FileNotFoundError as e:
    model, cfg = None, None
    display(Markdown(f"**No shipped model yet**, so there is nothing to certify on this page.\n\n"
                     f"```text\n{e}\n```\n\nOnce a headline run with `model.safetensors` is in `results/runs`, "
                     "this page shows its certificates."))
else:
    display(Markdown(f"Model: `{run_dir.name}` (width {cfg.width}, {cfg.epochs} epochs, receptive field "
                     f"{model.receptive_field}, stride {model.stride}, {cfg.head} head)."))

# %% tags=["hide-input"]
batches = []   # (images uint8, labels or -1, names)
skipped = []   # (file, why) of own images that could not be decoded
if model is not None and n_test:
    try:
        ds = load_dataset("cifar10", progress=False)
        test = subset(ds, n_test=n_test, seed=0)
        batches.append((test.x_test, test.y_test, [f"test image {i}" for i in range(len(test.y_test))]))
    except (FileNotFoundError, RuntimeError) as e:
        display(Markdown(f"CIFAR-10 is not available here, so no test images are shown "
                         f"(`{type(e).__name__}`: {str(e).splitlines()[0]})."))
if model is not None and images:
    own = load_own_images(images, size=(32, 32), classes=CIFAR10_CLASSES)
    skipped = own.skipped
    for name, why in skipped:
        print(f"skipped {name}: cannot be decoded ({why})")
    if len(own.names):
        batches.append((own.x, own.labels, own.names))
if model is not None and not batches:
    display(Markdown("Nothing to certify: no test images and no `images` folder."))

# %% tags=["hide-input"]
def certify_images(model, cfg, x_uint8, labels, sizes):
    """Per image: label used, whether it is predicted, the largest square patch still certified
    (Condition 3.2), and at the first size that fails (or the largest tried) l*, c*, R(l*)."""
    x = x_uint8.float().div(255).to(next(model.parameters()).device)
    with torch.no_grad():
        s = region_scores(model, x, cfg.head, amp=False).cpu().double()
    predicted = s.sum((2, 3)).argmax(1)
    used = torch.where(labels >= 0, labels, predicted)
    maps = ScoreMaps(s, used)
    rf, stride, (H, W) = model.receptive_field, model.stride, x.shape[-2:]
    certified = torch.stack([maps.correct & (maps.worst_case(p, rf, stride, (H, W))[0] > maps.tol)
                             for p in sizes], 1)                                     # (N, sizes)
    rows = []
    for i in range(len(x)):
        ok = certified[i].tolist()
        largest = max([p for p, c in zip(sizes, ok) if c], default=0)
        shown = next((p for p, c in zip(sizes, ok) if not c), sizes[-1])   # the first size that fails
        margin, target, row, col, area = maps.worst_case(shown, rf, stride, (H, W))
        r0, r1 = affected_range(H, s.shape[-2], shown, rf, stride)
        c0, c1 = affected_range(W, s.shape[-1], shown, rf, stride)
        row_i, col_i, c_star = int(row[i]), int(col[i]), int(target[i])
        rows.append({"label": int(used[i]), "labelled": bool(labels[i] >= 0),
                     "predicted": int(predicted[i]), "correct": bool(maps.correct[i]),
                     "largest_certified": largest, "shown_patch": shown, "row": row_i, "col": col_i,
                     "target": c_star, "margin": float(margin[i]),
                     "region": (int(r0[row_i]), int(r1[row_i]), int(c0[col_i]), int(c1[col_i])),
                     "sum_true": float(s[i, used[i]].sum()), "sum_target": float(s[i, c_star].sum()),
                     "certified": ok})
    return s, rows


def show(x_uint8, s, rows, names, classes):
    """One row per image: the image, the two score maps with R(l*), and the numbers beside them."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(8, 2.5 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 1, 1, 2]})
    for i, (r, ax) in enumerate(zip(rows, axes)):
        p = r["shown_patch"]
        r0, r1, c0, c1 = r["region"]
        ax[0].imshow(x_uint8[i].permute(1, 2, 0).numpy())
        ax[0].add_patch(Rectangle((r["col"] - 0.5, r["row"] - 0.5), p, p, fill=False, ec="yellow", lw=1.5))
        ax[0].set_title(names[i], fontsize=11)
        kind = "true" if r["labelled"] else "predicted"
        for a, cls, what in ((ax[1], r["label"], f"{kind} class"), (ax[2], r["target"], "strongest other c*")):
            a.imshow(s[i, cls].numpy(), cmap="gray", vmin=0, vmax=1)
            a.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0 + 1, r1 - r0 + 1, fill=False, ec="red", lw=1.5))
            a.set_title(f"{what}:\n{classes[cls]}, Σ = {s[i, cls].sum():.0f}", fontsize=11)
        for a in ax[:3]:
            a.set_xticks([])
            a.set_yticks([])
        verdict = (f"certified up to {r['largest_certified']}×{r['largest_certified']}"
                   if r["largest_certified"] else "not certified" if r["correct"] else "misclassified")
        lines = [verdict, "",
                 f"label: {classes[r['label']]}" if r["labelled"] else "no label: predicted class used",
                 f"predicted: {classes[r['predicted']]}",
                 f"at {p}×{p}: l* = (row {r['row']}, col {r['col']})",
                 f"R(l*): rows {r0}–{r1}, cols {c0}–{c1}",
                 f"  ({(r1 - r0 + 1) * (c1 - c0 + 1)} outputs)",
                 f"c* = {classes[r['target']]}",
                 f"min Σ∉R Δ − |R| = {r['margin']:.0f}",
                 f"  ({'> 0: certified' if r['margin'] > 0 else '≤ 0: fails'})"]
        ax[3].axis("off")
        ax[3].text(0, 1.0, lines[0], fontsize=12, weight="bold", va="top", transform=ax[3].transAxes,
                   color="tab:green" if r["largest_certified"] else "tab:red")
        ax[3].text(0, 0.84, "\n".join(lines[2:]), fontsize=10, va="top", transform=ax[3].transAxes,
                   linespacing=1.35)
    fig.tight_layout()
    return fig


summary = []
for x_uint8, labels, names in batches:
    s, rows = certify_images(model, cfg, x_uint8, labels, list(patch_sizes))
    classes = CIFAR10_CLASSES if s.shape[1] == len(CIFAR10_CLASSES) else [str(c) for c in range(s.shape[1])]
    show(x_uint8, s, rows, names, classes)
    plt.show()
    for name, r in zip(names, rows):
        summary.append({"image": name, "class certified": classes[r["label"]],
                        "predicted": classes[r["predicted"]],
                        "largest certified": f"{r['largest_certified']}×{r['largest_certified']}"
                        if r["largest_certified"] else "none",
                        **{f"{p}": "✓" if c else "✗" for p, c in zip(patch_sizes, r["certified"])}})

# %% [markdown]
# The same in numbers: ✓ under a patch side *p* where Condition 3.2 holds for a *p* × *p* patch at every
# position, i.e. no patch of that size anywhere in the image can change the prediction.
# Certification is monotone in the patch size (a larger patch covers a smaller one), so the ticks
# end at the largest patch certified.

# %% tags=["hide-input"]
if summary:
    display(readable(pd.DataFrame(summary), index=False))
elif model is not None:
    print("No images were certified.")
if images and model is not None:
    own_done = sum(1 for row in summary if not row["image"].startswith("test image"))
    print(f"Own images: {own_done} certified, {len(skipped)} skipped"
          + "".join(f"\n  skipped {name}: {why}" for name, why in skipped))
