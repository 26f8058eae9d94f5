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
from IPython.display import HTML, Markdown, display
from myst_nb import glue

from bagcert_lib.config import REPO_ROOT, grids
from bagcert_lib.model import cifar_scorer, num_parameters
from bagcert_lib.figures import readable
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
readable(table)

# %% [markdown]
# Our runs beside them: certification time for the test images (forward pass + 5×5 certificate,
# median over the runs of each RF), split into its two parts, and our models' parameter counts.
# Seconds in every column; the paper's on a Tesla V100 for 10,000 images, ours on the machine named
# above the table, as the sweep certified each run (one thread, two runs side by side; the benchmark
# further down times the models on an otherwise idle machine):

# %% tags=["hide-input"]
common = {c: ours[c].iloc[0] for c in ("n", "width", "device") if len(ours) and ours[c].nunique() == 1}
if common:
    display(Markdown("Ours: " + ", ".join(
        {"n": lambda v: f"{int(v):,} test images", "width": lambda v: f"models of width {int(v)}",
         "device": lambda v: f"on {v}"}[c](v) for c, v in common.items()) + "."))
side = pd.DataFrame({"paper: seconds": table["paper: seconds (V100, 10,000 images)"],
                     "ours: seconds": ours.seconds, "ours: forward pass": ours.forward_s,
                     "ours: certificate": ours.certify_s,
                     "paper: parameters (M)": table["paper: parameters (M)"],
                     "ours: parameters": ours.parameters.astype("Int64")}, index=table.index)
for c in ("n", "width", "device"):          # what differs between the RFs stays in the table
    if c not in common:
        side[f"ours: {c}"] = ours[c].astype("Int64") if c != "device" else ours[c]
readable(side, formats={"ours: certificate": "{:.3g}"})

# %% [markdown]
# ## BagCert against Derandomized Smoothing, measured here
#
# `benchmarks/certification.py` certifies the same test images with BagCert (each RF at the
# profile's width, and the paper's width 768 for one batch) and with our DS block and column
# smoothing (`bagcert_lib.smoothing`), on one machine in one run, for every patch shape of Figures
# 3 and 4. Per-image seconds, scaled to the 10,000 test images of the paper's Table 1. The paper's
# column is its V100 measurement; compare the *ratios*, not the seconds.

# %% tags=["hide-input"]
import json

bench_path = REPO_ROOT / "results" / "benchmarks" / "certification.json"
bench = json.loads(bench_path.read_text()) if bench_path.is_file() else {"rows": [], "ratios": {}}
measured = pd.DataFrame(bench["rows"], columns=["method", "model", "run", "n", "parameters", "seconds_per_image",
                                                "certify_over_forward", "clean_accuracy", "certified_accuracy_5x5"])
measured["seconds for 10,000 images"] = measured.seconds_per_image * 10_000
paper_seconds = {"DS (block)": paper.query("method == 'DS (BS)'").certification_seconds.iloc[0],
                 "DS (column)": paper.query("method == 'DS (CS)'").certification_seconds.iloc[0]}
paper_rf = paper.dropna(subset=["rf"]).set_index("rf").certification_seconds
measured["paper: seconds (V100)"] = [paper_seconds.get(m) if m in paper_seconds else
                                     paper_rf.get(int(model.split(",")[0][3:]))
                                     for m, model in zip(measured.method, measured.model)]
measured["parameters (M)"] = measured.parameters / 1e6
measured["model"] = [f"{m} {mo}" if m == "BagCert" else f"{m}: {mo}".replace("theta ", "θ ")
                     for m, mo in zip(measured.method, measured.model)]
glue("bench_device", bench.get("device", "not measured yet"), display=False)
display(Markdown(f"Seconds for 10,000 images (ours scaled from the images timed, on "
                 f"{bench.get('device', 'no machine yet')}; the paper's on a Tesla V100):"))
display(measured[["model", "n", "seconds for 10,000 images", "paper: seconds (V100)", "parameters (M)",
                  "certify_over_forward"]].pipe(
    readable, index=False, formats={"parameters (M)": "{:.2f}", "certify_over_forward": "{:.3f}"},
    words={"seconds for 10,000 images": "ours: seconds", "paper: seconds (V100)": "paper: seconds",
           "certify_over_forward": "certificate / forward pass"}))
accuracy = measured[["model", "run", "n", "clean_accuracy", "certified_accuracy_5x5"]].pipe(readable, index=False)
HTML(f"<details><summary>Accuracies of the timed images, and the run each model comes from</summary>"
     f"{accuracy.to_html()}</details>")

# %% [markdown]
# The ratios of this run next to the paper's (DS block vs BagCert RF 7: 788 s / 40.6 s; DS column:
# 28 s / 40.6 s). "images" above is how many test images each row was timed on; the accuracies
# folded under the table are for orientation only where a row was timed on few images (each DS run's own
# `certification.csv` has them on the test images its `n` column states).

# %% tags=["hide-input"]
r = bench["ratios"]
paper_rf7 = paper_rf.get(7)
ratios = pd.DataFrame([
    ("DS block / BagCert RF 7, per image", r.get("ds_block_over_bagcert_rf7_per_image"), paper_seconds["DS (block)"] / paper_rf7),
    ("DS column / BagCert RF 7, per image", r.get("ds_column_over_bagcert_rf7_per_image"), paper_seconds["DS (column)"] / paper_rf7),
    ("BagCert RF 7: certification / forward pass (all shapes)", r.get("bagcert_rf7_certify_over_forward"), None),
    ("summed-area certifier speed-up over a loop over positions (5×5)", r.get("summed_area_speedup_over_loop"), None),
    ("training throughput, bf16 / fp32", r.get("bf16_over_fp32_training"), None),
    ("bare forward + backward / the trainer (images/s)", r.get("bare_fwd_bwd_over_trainer"), None),
], columns=["ratio", "ours", "paper"]).set_index("ratio")
for key, value in r.items():
    glue(f"bench_{key}", f"{value:.3g}", display=False)
readable(ratios, formats={"ours": "{:.3g}", "paper": "{:.3g}"})

# %% [markdown]
# ## ImageNet: certifying the 50,000 validation images
#
# The paper certifies ImageNet's 50,000 validation images in "roughly 7 minutes" (§4, one V100;
# RF 17, 32×32 patches). Ours: each finished ImageNet run's certification wall time (decoding
# included, `certification.csv`) scaled to 50,000 images, none until an ImageNet run has been
# trained and certified; and `benchmarks/imagenet_certify.py`, which times the same loader and
# certifier on a few hundred generated JPEGs with untrained RF 17 weights on one CPU thread
# (`results/benchmarks/imagenet_certify.json`).

# %% tags=["hide-input"]
from bagcert_lib.results import IMAGENET_VAL, imagenet_runs

claims = pd.read_csv(REPO_ROOT / "results" / "paper" / "claims.csv").set_index("id")
inet = imagenet_runs(results)
inet_bench_path = REPO_ROOT / "results" / "benchmarks" / "imagenet_certify.json"
inet_bench = json.loads(inet_bench_path.read_text()) if inet_bench_path.is_file() else None
rows = [("paper (§4)", 17, IMAGENET_VAL, float(claims.loc["imagenet_seconds", "paper_value"]), "Tesla V100")]
rows += [(f"ours: {r.run}", r.rf, r.n, r.seconds_50k, r.device) for r in inet.itertuples()]
if inet_bench:
    rows.append(("ours: benchmark (untrained weights)", inet_bench["model"]["rf"],
                 inet_bench["images"]["n"], inet_bench["extrapolated_50k_s"]["total"], inet_bench["device"]))
    display(Markdown(f"The benchmark ran on {inet_bench['threads']} thread(s), load average "
                     f"{inet_bench['load_average_at_start'][0]:.1f} at its start. Seconds for 50,000 images:"))
inet_time = pd.DataFrame(rows, columns=["source", "rf", "images timed", "seconds", "device"])
glue("imagenet_timing", "from our ImageNet runs" if len(inet) else "no ImageNet run yet", display=False)
readable(inet_time, index=False, formats={"seconds": "{:,.0f}", "rf": "{:d}"}, words={"rf": "RF"})

# %% tags=["hide-input"]
run_links(pd.concat([runs, inet]), "table1.ipynb")

# %% [markdown]
# Compute behind every finished run in the results folder, per profile, method and machine: the
# wall time in hours of training (`provenance.json`), of certifying every patch shape
# (`certification.csv`) and of the PGD attack (`attack.json`), and the median seconds per training
# epoch ("runs of": profile, method). The benchmark runs are not included; each run's width and
# epochs are on the provenance page.

# %% tags=["hide-input"]
every = load_runs(results)
every = every[every.finished.fillna(False).astype(bool)]
hours = lambda s: s.sum() / 3600   # noqa: E731
compute = every.groupby(["profile", "method", "device"]).agg(
    runs=("run", "count"), seconds_per_epoch=("seconds_per_epoch", "median"), training_hours=("wall_s", hours),
    certification_hours=("certify_wall_s", hours), attack_hours=("attack_wall_s", hours))
compute["total_hours"] = compute[["training_hours", "certification_hours", "attack_hours"]].sum(axis=1)
total = compute.groupby(level="profile").total_hours.sum()   # from the unrounded hours
shown = compute.reset_index()
shown.insert(0, "runs of", shown.profile + ", " + shown.method)
glue("compute", readable(shown.drop(columns=["profile", "method"]), index=False,
                         formats={c: "{:.2f}" for c in compute.columns if c.endswith("hours")},
                         words={"seconds_per_epoch": "s / epoch", "training_hours": "training",
                                "certification_hours": "certifying", "attack_hours": "attack",
                                "total_hours": "total"}))
glue("compute_total", f"{total.sum():.1f} h of wall time over {int(compute.runs.sum())} runs ("
     + ", ".join(f"{p}: {h:.1f} h" for p, h in total.items()) + ")", display=False)
