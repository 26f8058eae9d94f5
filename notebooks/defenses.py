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
# # Every defense at equal compute
#
# The paper's Figure 2 compares BagCert with defenses "taken from the respective papers": other
# architectures, budgets and input sizes. Here every defense is trained on CIFAR-10 by the same
# training loop at the same **training FLOPs**, counted by the same code
# (`model.training_flops`: 6 × multiply-accumulates per image × images seen), and certified on
# the whole test set against 5×5 patches and every shape of Figures 3 and 4:
#
# * **BagCert** (§3): region scorer, Heaviside head, Condition 3.2;
# * **CBN**, Clipped BagNet {cite}`zhang2020clipped`: the same region scorer (RF 7), trained as a
#   plain BagNet (cross-entropy on the mean logit, as its authors do), its class logits clipped
#   by tanh(0.05 z − 1) and summed at test time (`bagcert_lib.clipped_bagnet`);
# * **Mask-BN**, PatchGuard's robust masking {cite}`xiang2020patchguard`: the same region scorer, logits
#   clipped to [0, ∞), the window of highest evidence masked per class, trained with masked
#   features (`bagcert_lib.patchguard`);
# * **DS**, Derandomized Smoothing {cite}`levine2020derandomized`, block and column ablations on a
#   ResNet-18 (`bagcert_lib.smoothing`); DS block classifies 1,024 ablations of each image;
# * **Mask-DS**, PatchGuard's robust masking on DS column ablations {cite}`xiang2020patchguard`: a
#   second certificate of the DS column model, whose softmax on each column ablation is a local
#   feature; the window of bands one patch meets is masked per class (`bagcert_lib.mask_ds`);
# * **PatchCleanser**, double masking {cite}`xiang2022patchcleanser`: a ResNet-18 trained with Cutout on
#   whole images, certified when every prediction on the image with two masks of an R-covering
#   mask set is the label (`bagcert_lib.patchcleanser`); it makes up to several hundred masked
#   forward passes per image and shape.
#
# Two budgets (`grids.equal_compute` of `_config.yml`): the `cpu` grid's (width 32, 6 epochs,
# ≈ 1.2 × 10¹⁴ FLOPs) and the compute study's width 64 × 16 epochs (≈ 1.3 × 10¹⁵). A run belongs to
# a budget when its training FLOPs are within the factor `grids.equal_compute.factor` (1.25) of
# the budget's, the same rule as the claims page's equal-compute rows, and each defense is shown
# at a budget by its run closest to the budget's FLOPs; the table gives each run's FLOPs. The
# region-scorer defenses train at BagCert's width and epochs; DS and PatchCleanser train a
# ResNet-18 of the size that costs the same (`resnet` of each budget: width 16 × 12 epochs and
# width 32 × 31 epochs). The first DS runs (width 16 × 6 epochs, 6.4 × 10¹³ FLOPs, half the
# first budget) belong to no budget; the Figure 2–4 pages show the first budget's.
# Methods or budgets without a finished, certified run are named as such, never filled in.
# Every certificate here is checked against brute force on small inputs and by a PGD patch attack
# (`tests/test_smoothing.py`, `tests/test_clipped_bagnet.py`, `tests/test_patchguard.py`,
# `tests/test_mask_ds.py`, `tests/test_patchcleanser.py`); on the trained models the attack's numbers are in the runs'
# `attack.json` (BagCert, CBN, Mask-BN), `attack_ds.json` (DS block and column),
# `attack_mask_ds.json` and `attack_patchcleanser.json` (`bagcert_lib.runs`), shown under the
# table below.

# %% tags=["parameters", "hide-input"]
results: str = None  # results folder (default: $BAGCERT_RESULTS, else results/runs)
patch: str = "5x5"  # patch shape of the clean-versus-certified panel
benchmark: str = None  # the first budget's certification-cost JSON (default: results/benchmarks/certify_cost.json; budget N's: certify_cost-budgetN.json beside it)

# %% tags=["hide-input"]
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from bagcert_lib.certifier import patch_label
from bagcert_lib.config import REPO_ROOT, grids
from bagcert_lib.figures import PAPER_COLOR, paper_marks, paper_values, readable
from bagcert_lib.results import load_certification, load_runs, run_links


def say(text):
    """Text under a cell, wrapped to the page (Markdown, not a fixed-width print)."""
    display(Markdown(text))


g = grids()
BUDGETS = [{**b, "flops": float(b["flops"])} for b in g["equal_compute"]["budgets"]]
RF = g["equal_compute"]["rf"]
FACTOR = float(g["equal_compute"].get("factor", 1.25))
DEFENSES = ["BagCert", "CBN", "Mask-BN", "DS block", "DS column", "Mask-DS", "PatchCleanser"]
LABEL = {"bagcert": "BagCert", "cbn": "CBN", "mask-bn": "Mask-BN", "ds-block": "DS block",
         "ds-column": "DS column", "patchcleanser": "PatchCleanser"}
CONDITION = {"BagCert": "3.2", "CBN": "CBN", "Mask-BN": "Mask-BN", "DS block": "DS", "DS column": "DS",
             "Mask-DS": "Mask-DS", "PatchCleanser": "PC"}
COLOR = {"BagCert": "tab:blue", "CBN": "tab:orange", "Mask-BN": "tab:green", "DS block": "tab:olive",
         "DS column": "tab:purple", "Mask-DS": "tab:pink", "PatchCleanser": "tab:brown"}
ASPECT = [patch_label((h, w)) for h, w in g["aspect_ratio_patches"]]     # labels are w x h
SQUARES = [patch_label(s) for s in g["square_patches"]]


def budget_of(flops):
    """Index of the budget within a factor FACTOR of ``flops`` (None: no budget)."""
    if flops is None or not np.isfinite(flops) or flops <= 0:
        return None
    d = [abs(np.log(flops / b["flops"])) for b in BUDGETS]
    return int(np.argmin(d)) if min(d) <= np.log(FACTOR) + 1e-9 else None


def budget_label(i):
    """A budget by its training FLOPs (its models' sizes differ by defense: see above)."""
    return f"{BUDGETS[i]['flops']:.1e} FLOPs"


runs = load_runs(results)
done = runs[runs["finished"].fillna(False).astype(bool) & runs["certified"].fillna(False).astype(bool)].copy()
done["defense"] = done["method"].map(LABEL)
done["budget"] = [budget_of(f) for f in done["training_flops"].astype(float)]
# BagCert, CBN and Mask-BN at the grid's receptive field; BagCert: every margin, Heaviside, seed 0
keep = done["defense"].notna() & done["budget"].notna() & (
    done["method"].str.startswith("ds-") | (done["rf"] == RF)) & (
    (done["method"] != "bagcert") | ((done["head"] == "heaviside") & (done["seed"] == 0) & (done["sigma"] == 0)))
shown = done[keep]
cert = load_certification(results).query("run in @shown.run")
cert = cert.merge(shown[["run", "defense", "budget", "training_flops"]], on="run")
cert.loc[cert["condition"] == "Mask-DS", "defense"] = "Mask-DS"     # the DS column model's second certificate
cert = cert[cert["condition"] == cert["defense"].map(CONDITION)]
headline_margin = g["headline"]["margin"]
# one run per (defense, budget): the one whose FLOPs are closest to the budget's (BagCert: its
# headline margin); BagCert's other margins of the same profile and size join it in Figure 2's panel
cand = shown[(shown["method"] != "bagcert") | (shown["margin"] == headline_margin)].copy()
cand["distance"] = [abs(np.log(f / BUDGETS[int(b)]["flops"])) for f, b in
                    zip(cand["training_flops"].astype(float), cand["budget"])]
chosen = cand.sort_values(["distance", "run"]).drop_duplicates(["defense", "budget"])
main = cert[cert["run"].isin(chosen["run"])]
same = shown.merge(chosen.query("method == 'bagcert'")[["budget", "profile", "width", "epochs"]],
                   on=["budget", "profile", "width", "epochs"])
panel = cert[cert["run"].isin(chosen["run"]) | cert["run"].isin(same.query("method == 'bagcert'")["run"])]
bench_path = Path(benchmark) if benchmark else REPO_ROOT / "results" / "benchmarks" / "certify_cost.json"
bench_paths = [bench_path] + [bench_path.with_name(f"certify_cost-budget{i + 1}.json") for i in range(1, len(BUDGETS))]
benches = {i: json.loads(p.read_text()) for i, p in enumerate(bench_paths) if p.is_file()}   # by budget
cost = {i: {d["defense"]: d for d in b["defenses"]} for i, b in benches.items()}

# %% [markdown]
# ## The table
#
# Per defense and budget: its run's training FLOPs, the test images certified, clean and certified
# accuracy (%) against 5×5 patches, the worst certified accuracy (%) over the eight 24-pixel aspect
# ratios of Figure 4 ("worst 24-px") and which shape it is (w × h), and the seconds to certify
# 10,000 images against all shapes of Figures 3 and 4 ("s / 10k", from the cost benchmark of
# that budget's models below). BagCert is its headline configuration (RF 7, M 0.5).

# %% tags=["hide-input"]
rows = []
for i in range(len(BUDGETS)):
    for d in DEFENSES:
        c = main[(main["defense"] == d) & (main["budget"] == i)]
        five = c[c["patch"] == patch]
        asp = c[c["patch"].isin(ASPECT)]
        worst = asp.loc[asp["certified_accuracy"].idxmin()] if len(asp) else None
        rows.append({
            "budget": budget_label(i), "defense": d,
            "run": five["run"].iloc[0] if len(five) else "no run yet",
            "training FLOPs": float(five["training_flops"].iloc[0]) if len(five) else np.nan,
            "n": int(five["n"].iloc[0]) if len(five) else np.nan,
            "clean_accuracy": float(five["clean_accuracy"].iloc[0]) if len(five) else np.nan,
            "certified_accuracy": float(five["certified_accuracy"].iloc[0]) if len(five) else np.nan,
            "worst_aspect_ratio_certified": float(worst.certified_accuracy) if worst is not None else np.nan,
            "worst aspect ratio": worst.patch.replace("x", " × ") if worst is not None else "—",
            # each budget's benchmark timed that budget's models: shown beside its runs only
            "seconds per 10,000 images": (cost.get(i, {}).get(d, {}).get("seconds_per_10k_images", np.nan)
                                          if len(five) else np.nan)})
table = pd.DataFrame(rows).set_index(["budget", "defense"])
missing = table[table["run"] == "no run yet"].index.tolist()
shown_table = table.drop(columns="run").rename(index={budget_label(i): f"{BUDGETS[i]['flops']:.1e}"
                                                      for i in range(len(BUDGETS))})
shown_table.index.names = ["budget (FLOPs)", "defense"]
readable(shown_table, percent=["clean_accuracy", "certified_accuracy", "worst_aspect_ratio_certified"],
         words={"training FLOPs": "FLOPs", "n": "images", "clean_accuracy": "clean",
                "certified_accuracy": f"certified {patch.replace('x', '×')}",
                "worst_aspect_ratio_certified": "worst 24-px", "worst aspect ratio": "shape",
                "seconds per 10,000 images": "s / 10k"},
         formats={"training FLOPs": "{:.1e}", "n": "{:,.0f}", "seconds per 10,000 images": "{:,.0f}"})

# %% tags=["hide-input"]
TEST_SET = 10_000                                                # CIFAR-10's test split
subset = table[table["n"] < TEST_SET]
say("No finished, certified run yet: " + ("; ".join(f"{d} at {b}" for b, d in missing) if missing else "none")
    + ". Certified on a fixed class-balanced subset rather than all 10,000 test images: "
    + ("; ".join(f"{d} at {b} ({n:,.0f} images)" for (b, d), n in subset["n"].items()) if len(subset) else "none")
    + "." + "".join(f" No certification-cost benchmark of budget {i + 1} yet (benchmarks/certify_cost.py"
                    f"{'' if i == 0 else f' --budget {i + 1}'})." for i in range(len(BUDGETS)) if i not in benches))

# %% [markdown]
# The PGD patch attack on each run of the table, 5×5 unless the row says otherwise: App. A.2's
# attack for BagCert, CBN and Mask-BN (each with its own objective), and the attacks on DS (block
# and column), Mask-DS and PatchCleanser, which check their predictions at every step. "certified
# broken" counts certified images whose prediction the attack changed: a sound certificate keeps
# it at 0. The DS attack puts the patch where the ablations it meets vote most for the label over
# the runner-up and counts every ablation of its final image again; DS's certificate assumes that
# a patch changes no class's votes by more than Δ, the ablations it can meet, and the record says
# by how much it did.

# %% tags=["hide-input"]
from bagcert_lib.rundir import ATTACK, DEFENSE_ATTACK, read_json

ATTACK_FILE = {"BagCert": ATTACK, "CBN": ATTACK, "Mask-BN": ATTACK, "DS block": DEFENSE_ATTACK["ds"],
               "DS column": DEFENSE_ATTACK["ds"], "Mask-DS": DEFENSE_ATTACK["mask-ds"],
               "PatchCleanser": DEFENSE_ATTACK["patchcleanser"]}
path_of = dict(zip(runs["run"], runs["path"]))
attacked, votes = [], []
for (b, d), run in table["run"].items():
    f = Path(path_of[run]) / ATTACK_FILE[d] if d in ATTACK_FILE and run in path_of else None
    if f is not None and f.is_file():
        a = read_json(f)
        attacked.append({"budget (FLOPs)": b.split(" ")[0], "defense": d,
                         "patch": "×".join(map(str, a["patch"][::-1])), "n": a["n"],
                         "clean_accuracy": a["clean_accuracy"], "certified_accuracy": a["certified_accuracy"],
                         "adversarial_accuracy": a["adversarial_accuracy"],
                         "certified broken": int(a["certified_broken"])})
        if "vote_change" in a:
            votes.append(f"{d} at {b.split(' ')[0]}: {a['vote_change']} of Δ = {a['delta']}")
attacks = pd.DataFrame(attacked)
if len(attacks):
    display(readable(attacks.set_index(["budget (FLOPs)", "defense"]),
                     percent=["clean_accuracy", "certified_accuracy", "adversarial_accuracy"],
                     words={"n": "images", "clean_accuracy": "clean", "certified_accuracy": "certified",
                            "adversarial_accuracy": "adversarial"},
                     formats={"n": "{:,.0f}"}))
unattacked = [f"{d} at {b.split(' ')[0]}" for (b, d), run in table["run"].items()
              if d in ATTACK_FILE and run in path_of and not (Path(path_of[run]) / ATTACK_FILE[d]).is_file()]
say(("**No certified image broken** in any attacked run." if len(attacks) and not attacks["certified broken"].any()
     else f"**Certified images broken:** {int(attacks['certified broken'].sum())}: a certificate is unsound."
     if len(attacks) else "No attacked run yet.")
    + (" The largest change of a class's votes by the DS attack's patch: " + "; ".join(votes) + "."
       if votes else "")
    + (" Not attacked yet: " + "; ".join(unattacked) + "." if unattacked else ""))

# %% [markdown]
# ## Clean against certified accuracy (Figure 2's axes)
#
# One panel per budget. Filled markers: our runs (BagCert at every margin of its RF 7 run's profile
# and size, joined by a thin line); grey open markers: the values other papers report for CIFAR-10 at this patch size
# (`results/baselines/baselines.csv`; their own architectures and budgets, not equal compute); the
# red open star: the paper's BagCert (RF 7, M 0.5, at the paper's width 768 and 350 epochs), as §4
# states it.

# %% tags=["hide-input"]
baselines = pd.read_csv(REPO_ROOT / "results" / "baselines" / "baselines.csv")
reported = baselines.query("dataset == 'CIFAR-10' and patch == @patch").drop_duplicates("method")
marker = {"BagCert": "*", "CBN": "s", "Mask-BN": "D", "DS block": "X", "DS column": "P",
          "Mask-DS": "v", "PatchCleanser": "h"}
stated = paper_values("figure2").query("method == 'BagCert' and condition == '3.2' and patch == @patch")
fig, axes = plt.subplots(1, len(BUDGETS), figsize=(9, 5.6), sharex=True, sharey=True)
for i, ax in enumerate(np.atleast_1d(axes)):
    here = panel[(panel["budget"] == i) & (panel["patch"] == patch)]
    for d in DEFENSES:
        pts = here[here["defense"] == d].sort_values("margin")
        if d == "BagCert" and len(pts) > 1:
            ax.plot(pts.clean_accuracy * 100, pts.certified_accuracy * 100, color=COLOR[d], lw=0.7)
        ax.scatter(pts.clean_accuracy * 100, pts.certified_accuracy * 100, marker=marker[d],
                   color=COLOR[d], s=90 if d == "BagCert" else 60,
                   label=f"{d} (ours{', no run yet' if pts.empty else ''})")
    for m, (_, b) in zip("^vo<>", reported.iterrows()):
        ax.scatter(b.clean_accuracy * 100, b.certified_accuracy * 100, marker=m, facecolors="none",
                   edgecolors="0.35", s=60, label=f"{b.method} (reported)")
    for _, q in stated.iterrows():                  # the paper's BagCert, at the paper's scale
        ax.scatter(q.clean_accuracy * 100, q.certified_accuracy * 100, marker="*", s=260,
                   facecolors="none", edgecolors=PAPER_COLOR, linewidths=2, zorder=5,
                   label=f"paper: BagCert RF {q.rf:g}, M {q.margin:g} (§4)")
    ax.set_title(f"Budget {i + 1}: {BUDGETS[i]['flops']:.1e} FLOPs", fontsize=13)
    ax.set_xlabel("Clean accuracy (%)", fontsize=13)
    ax.grid(alpha=0.3)
np.atleast_1d(axes)[0].set_ylabel(f"Certified accuracy (%), {patch.replace('x', ' × ')}", fontsize=13)
ax.set_xlim(0, 100), ax.set_ylim(-2, 70)   # a point at 0 % certified stays whole
handles, labels = np.atleast_1d(axes)[0].get_legend_handles_labels()
fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=12, frameon=False)
fig.tight_layout(rect=(0, 0.27, 1, 1))
plt.show()

# %% [markdown]
# ## Against the patch's size and shape (Figures 3 and 4's axes)
#
# Certified accuracy against square patches 1×1 … 16×16 (left) and against the aspect ratio of
# 24-pixel patches, w × h, from tall (1 × 24) to wide (24 × 1) (right), per budget. BagCert is its
# headline configuration. In red, hollow: what the paper's §4 states about Figures 3 and 4 (its
# BagCert at the paper's scale; DS column on wide patches). A budget's square-patch panel names
# the defenses that have no run there yet.

# %% tags=["hide-input"]
fig, axes = plt.subplots(len(BUDGETS), 2, figsize=(9, 4.0 * len(BUDGETS) + 3.0), squeeze=False)
for i in range(len(BUDGETS)):
    for ax, shapes, title in ((axes[i, 0], SQUARES, "square patches"), (axes[i, 1], ASPECT, "24-pixel patches")):
        for d in DEFENSES:
            c = main[(main["defense"] == d) & (main["budget"] == i)].set_index("patch")
            ys = [c.certified_accuracy.get(s, np.nan) * 100 for s in shapes]
            ax.plot(range(len(shapes)), ys, marker=marker[d], color=COLOR[d],
                    label=d + ("" if c.size else " (no run yet)"))
        ax.set_xticks(range(len(shapes)), [s.replace("x", "×") for s in shapes], fontsize=10,
                      rotation=0 if shapes is SQUARES else 40)
        if shapes is SQUARES:
            ax.set_xticks(range(len(shapes)), [s.split("x")[0] for s in shapes], fontsize=10)
        paper_marks(ax, paper_values("figure3" if shapes is SQUARES else "figure4"), shapes)
        ax.set_xlabel("square side" if shapes is SQUARES else "patch w × h", fontsize=12)
        ax.set_ylabel("Certified (%)", fontsize=12)
        ax.set_title(f"Budget {i + 1}, {BUDGETS[i]['flops']:.1e} FLOPs: {title}", fontsize=12)
        ax.grid(alpha=0.3)
    missing = [d for d in DEFENSES if main[(main["defense"] == d) & (main["budget"] == i)].empty]
    if missing:                         # the legend is the first budget's: say what this one lacks
        axes[i, 0].text(0.97, 0.96, "no run yet:\n" + "\n".join(missing), transform=axes[i, 0].transAxes,
                        ha="right", va="top", fontsize=11, color="0.3",
                        bbox=dict(facecolor="white", edgecolor="0.7", alpha=0.9))
legend = {}
for ax in axes[0]:                      # each defense once, then the paper's marks of both panels
    legend.update(zip(*reversed(ax.get_legend_handles_labels())))
fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=2, fontsize=12, frameon=False)
fig.tight_layout(rect=(0, 2.0 / (4.0 * len(BUDGETS) + 3.0), 1, 1))
plt.show()

# %% [markdown]
# ## What certifying costs
#
# Seconds to certify one test image against every shape of Figures 3 and 4, each defense through
# its own certificate, all in one run of `benchmarks/certify_cost.py` on one machine per budget
# (`--budget 2` for the second; DS block makes 1,024 forward passes per image). Ratios compare
# defenses within one run; two budgets' runs may come from different machines or days. Weights:
# the run's trained model, its checkpoint after k of its K epochs (k/K) while it still trains, or
# fresh (random, when no run exists yet: the cost barely depends on the weights).

# %% tags=["hide-input"]
for i in range(len(BUDGETS)):
    b = benches.get(i)
    if b is None:
        say(f"**Budget {i + 1} ({budget_label(i)})**: no certification-cost benchmark yet: run "
            f"`python benchmarks/certify_cost.py{'' if i == 0 else f' --budget {i + 1}'}`.")
        continue
    cpu = b["cpu"]
    where = (f"{cpu.get('model')} ({', '.join(k for k in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if cpu.get(k))})"
             if b["device"].startswith("CPU") else b["device"])
    say(f"**Budget {i + 1} ({budget_label(i)})**: measured {b['date']} on {where}, {b['threads']} thread(s), "
        f"commit {str(b['git'].get('commit'))[:10]}" + (f"; {b['note']}" if b.get("note") else "") + ".")
    bt = pd.DataFrame(b["defenses"]).set_index("defense")
    bt["weights"] = (bt["weights"].str.replace(r"^fresh.*", "fresh", regex=True)     # short: the table fits
                     .str.replace(r"^partly trained \((\d+) of (\d+) epochs\)$", r"\1/\2", regex=True))
    bt["ratio to BagCert"] = bt["seconds_per_image"] / bt.loc["BagCert", "seconds_per_image"] \
        if "BagCert" in bt.index else np.nan
    display(readable(bt[["weights", "n", "forward_s_per_image", "certify_s_per_image", "seconds_per_image",
                         "seconds_per_10k_images", "ratio to BagCert"]],
                     formats={"forward_s_per_image": "{:.4f}", "certify_s_per_image": "{:.4f}",
                              "seconds_per_image": "{:.4f}", "seconds_per_10k_images": "{:,.0f}",
                              "ratio to BagCert": "{:.1f}"}))
    if b.get("missing"):
        say("Not measured in this benchmark run: " + ", ".join(b["missing"]) + " (its own "
            "certification time is in its run's certification.csv, `certify_s`).")

# %% [markdown]
# ## What CBN's clipping makes of our logits
#
# CBN scores a region by φ(z) = tanh(0.05 z − 1), constants its authors set for BagNets on
# ImageNet {cite}`zhang2020clipped`; we keep them. A patch controls every output in its window
# (121 of them for a 5 × 5 patch at RF 7), and there φ can move a class's score over its whole range,
# so the certificate needs the true class ahead by more than that count over the outputs outside.
# The cell measures, on 200 test images, where our CBN model's region logits lie and how far φ
# puts the true class ahead.

# %% tags=["hide-input"]
from bagcert_lib import clipped_bagnet
from bagcert_lib.data import DataNotFoundError, load_dataset
from bagcert_lib.local_logits import local_logits, window_shape
from bagcert_lib.pretrained import load_run
from bagcert_lib.runs import test_batches

cbn_runs = chosen[chosen["defense"] == "CBN"]
if cbn_runs.empty:
    say("No finished CBN run yet.")
for r in cbn_runs.itertuples():
    try:
        cifar = load_dataset("cifar10", progress=False)
    except DataNotFoundError as err:
        say(f"CIFAR-10 is not here, so the logits are not measured: {err}")
        break
    cbn_model, cbn_cfg = load_run(r.path, "cpu")
    x, y = next(iter(test_batches(cifar, cbn_cfg, "cpu", batch_size=200, model=cbn_model)))
    z = local_logits(cbn_model, x)
    true = torch.nn.functional.one_hot(y, z.shape[1]).bool()[:, :, None, None].expand_as(z)
    sc = clipped_bagnet.scores(z)
    total = sc.sum((2, 3))                                         # Σ over the outputs, (B, C)
    lead = total.gather(1, y[:, None]).squeeze(1) - total.masked_fill(true[:, :, 0, 0], -np.inf).amax(1)
    lead = lead[lead > 0]                                          # the images CBN classifies correctly
    k = window_shape((5, 5), cbn_model.receptive_field, cbn_model.stride, tuple(x.shape[-2:]), tuple(z.shape[-2:]))
    lo, mid, hi = np.percentile(z[true].numpy(), [5, 50, 95])
    olo, ohi = np.percentile(z[~true].numpy(), [5, 95])
    slo, shi = ((np.tanh(clipped_bagnet.SCALE * v + clipped_bagnet.SHIFT) + 1) / 2 for v in (min(lo, olo), max(hi, ohi)))
    say(f"{r.run} ({r.training_flops:.1e} FLOPs): the true class's region logits lie between {lo:.1f} and {hi:.1f} "
          f"(5th–95th percentile, median {mid:.1f}), the other classes' between {olo:.1f} and {ohi:.1f}; φ maps that "
          f"range to scores {slo:.2f}–{shi:.2f} of (0, 1). Summed over all {z.shape[-2] * z.shape[-1]:,} outputs, the "
          f"true class's scores lead the strongest other class's by {np.median(lead.numpy()):.0f} on the median "
          f"correctly classified image ({len(lead)} of {len(y)}), "
          f"against the {k[0] * k[1]} outputs a 5 × 5 patch controls.")

# %% [markdown]
# ## Which defense wins where
#
# The rule, the same for every budget and patch shape: a defense **wins** a shape at a budget
# when its certified accuracy is the highest among the runs at that budget and ahead of the
# next by more than twice the standard error of a difference of two accuracies on n test images
# (√(2 p (1 − p) / n), p their mean); otherwise the leaders are **tied**, and a tie counts for
# neither in the tally of leaders. BagCert **leads another defense on both** at a budget when
# its clean and its certified accuracy (5×5) are both at least the other's; its Condition 3.3 is
# compared with DS block by certified accuracy alone. Both compare the single runs of the table
# (BagCert's seed 0); the claims page judges "BagCert dominates Mask-BN and CBN" and "its 3.3
# frontier follows DS block's" against seed-to-seed noise, by its own stated rules. Defenses
# without a run at a budget are not judged there.

# %% tags=["hide-input"]
def verdicts(frame, shapes):
    out = []
    for i in range(len(BUDGETS)):
        for s in shapes:
            c = frame[(frame["budget"] == i) & (frame["patch"] == s)].sort_values("certified_accuracy",
                                                                                   ascending=False)
            if c.empty:
                continue
            top = c.iloc[0]
            if len(c) == 1:
                out.append((i, s, f"{top.defense} alone"))
                continue
            nxt = c.iloc[1]
            p, n = (top.certified_accuracy + nxt.certified_accuracy) / 2, min(top.n, nxt.n)
            se = np.sqrt(2 * p * (1 - p) / n) if n else np.inf
            gap = top.certified_accuracy - nxt.certified_accuracy
            out.append((i, s, f"{top.defense} wins (+{gap * 100:.1f} points)" if gap > 2 * se
                        else f"{top.defense} and {nxt.defense} tied"))
    out = pd.DataFrame(out, columns=["budget", "patch", "verdict"])
    out["patch w × h"] = [p.replace("x", " × ") for p in out["patch"]]   # labels are w x h
    return out


v = verdicts(main, [patch] + SQUARES[::3] + ASPECT)
lines = []
for i in range(len(BUDGETS)):
    vi = v[v["budget"] == i]
    if vi.empty:
        lines.append(f"Budget {i + 1} ({budget_label(i)}): no certified runs yet.")
        continue
    five = vi[vi["patch"] == patch].verdict.iloc[0] if (vi["patch"] == patch).any() else "—"
    counts = vi[vi["patch"] != patch].verdict.str.extract(r"^(.*?) (?:wins|alone)")[0].value_counts()
    ties = int(vi[vi["patch"] != patch].verdict.str.endswith("tied").sum())
    present = [d for d in DEFENSES if ((main["budget"] == i) & (main["defense"] == d)).any()]
    among = "" if len(present) == len(DEFENSES) else f" (of the defenses with a run here: {', '.join(present)})"
    lines.append(f"Budget {i + 1} ({budget_label(i)}){among}: at {patch.replace('x', ' × ')}: {five}; "
                 "leader across the other shapes shown: "
                 + ", ".join([f"{k} {n}×" for k, n in counts.items()] + ([f"tied {ties}×"] if ties else [])) + ".")
    bc = table.loc[budget_label(i)]
    for other in DEFENSES[1:]:
        if np.isnan(bc.loc["BagCert", "certified_accuracy"]) or np.isnan(bc.loc[other, "certified_accuracy"]):
            lines.append(f"  BagCert against {other}: not judged (a run is missing).")
            continue
        dom = (bc.loc["BagCert", "clean_accuracy"] >= bc.loc[other, "clean_accuracy"]
               and bc.loc["BagCert", "certified_accuracy"] >= bc.loc[other, "certified_accuracy"])
        lines.append(f"  BagCert {'leads' if dom else 'does not lead'} {other} on both accuracies "
                     f"(clean {bc.loc['BagCert', 'clean_accuracy'] * 100:.1f} vs {bc.loc[other, 'clean_accuracy'] * 100:.1f} %, "
                     f"certified {bc.loc['BagCert', 'certified_accuracy'] * 100:.1f} vs "
                     f"{bc.loc[other, 'certified_accuracy'] * 100:.1f} %).")
    # Condition 3.3 (BagCert's global certificate, §3.1) against DS block, the paper's Figure 2 pairing
    b_run = chosen[(chosen["defense"] == "BagCert") & (chosen["budget"] == i)]["run"]
    c33 = load_certification(results).query("run in @b_run and patch == @patch and condition == '3.3'")
    ds_b = bc.loc["DS block", "certified_accuracy"]
    if len(c33) and not np.isnan(ds_b):
        x = float(c33.certified_accuracy.iloc[0])
        lines.append(f"  BagCert's Condition 3.3 {'is at or above' if x >= ds_b else 'is below'} DS block "
                     f"({x * 100:.1f} vs {ds_b * 100:.1f} % certified).")
    else:
        lines.append("  BagCert's Condition 3.3 against DS block: not judged (a run is missing).")
say("\n".join(f"- {l.strip()}" if l.startswith("  ") else f"\n**{l}**\n" for l in lines))
glue("defenses_verdict", " ".join(l.strip() for l in lines), display=False)


def summary():
    """One sentence per budget for the front page: who certifies the most at 5×5, and what has no run."""
    out = []
    for i in range(len(BUDGETS)):
        t = table.loc[budget_label(i)]
        have = t[t["run"] != "no run yet"]
        none = [d for d in t.index if d not in have.index]
        if have.empty:
            out.append(f"At {BUDGETS[i]['flops']:.1e} training FLOPs no defense has a finished run yet.")
            continue
        best = have["certified_accuracy"].idxmax()

        def acc(d):                     # a run certified on a subset says so
            n = have.loc[d, "n"]
            return (f"{have.loc[d, 'certified_accuracy'] * 100:.1f} %"
                    + (f" on {n:,.0f} test images" if n < TEST_SET else ""))
        rest = ", ".join(f"{d} {acc(d)}" for d in have.index if d != best)
        out.append(f"At {BUDGETS[i]['flops']:.1e} training FLOPs, {best} certifies the most against "
                   f"{patch.replace('x', ' × ')} patches ({acc(best)}"
                   + (f"; {rest}" if rest else "") + ")"
                   + (f"; no run yet: {', '.join(none)}." if none else "."))
    return " ".join(out)


glue("defenses_summary_html", HTML(summary()), display=False)
readable(v.assign(budget=[budget_label(i) for i in v["budget"]]).set_index(["budget", "patch w × h"])[["verdict"]])

# %% tags=["hide-input"]
run_links(shown, "defenses.ipynb")
