"""Plotting helpers shared by the figure notebooks (matplotlib; reads the results schema)."""
from __future__ import annotations

import math
import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .certifier import _pair, patch_label
from .config import REPO_ROOT, grids
from .results import (GRID_RUNS, grid_runs, load_certification, load_runs, shipped_headline,
                      smoothing_runs)


def smoothing_label(run) -> str:
    """'DS column b=4, θ=0.3' for a Derandomized Smoothing run (a row of the results schema)."""
    kind = run["method"].removeprefix("ds-")
    return f"DS {kind} {'s' if kind == 'block' else 'b'}={int(run['ablation_size'])}, θ={run['theta']:g}"


#: Figures in the book are this wide (inches at FIG_DPI, 800 px): wider than the content column at
#: 1280 px (688 px), so the browser only ever scales them down, and their text (FONT_SIZE points,
#: about 19 px before scaling, 16 px after) stays as large as the body text.
FIG_WIDTH, FIG_DPI, FONT_SIZE = 8.0, 100, 14

#: Colours and markers that say whose value a point is: ours measured (filled), the paper's
#: stated values (red, hollow) and baselines as their papers report them (grey, hollow).
PAPER_COLOR, REPORTED_COLOR, SHIPPED_COLOR = "tab:red", "0.35", "black"
REPORTED_MARKERS = {"IBP": "^", "DS": "D", "Mask-BN": "s", "Mask-DS": "P", "CBN": "v"}

def book_style():
    """matplotlib settings of every figure in the book (:data:`FIG_WIDTH`, :data:`FONT_SIZE`)."""
    plt.rcParams.update({"figure.dpi": FIG_DPI, "savefig.dpi": FIG_DPI, "font.size": FONT_SIZE,
                         "axes.titlesize": FONT_SIZE, "axes.labelsize": FONT_SIZE,
                         "legend.fontsize": FONT_SIZE - 1, "xtick.labelsize": FONT_SIZE - 1,
                         "ytick.labelsize": FONT_SIZE - 1, "figure.figsize": (FIG_WIDTH, 5.5)})


def paper_values(figure: str) -> pd.DataFrame:
    """What the paper's text states for ``figure`` ("figure2" …), one row per value, with the
    sentence it comes from (``results/paper/figures.csv``; ``relation`` ≈, ≥ or > says how the
    paper states it, ``patch`` "every" means every shape of the figure)."""
    df = pd.read_csv(REPO_ROOT / "results" / "paper" / "figures.csv", dtype={"condition": str, "patch": str})
    return df[df.figure == figure].reset_index(drop=True)


def reported_baselines(dataset: str = "CIFAR-10", patch: str | None = "5x5") -> pd.DataFrame:
    """Baselines as their papers report them (``results/baselines/baselines.csv``): one row per
    method (the first listed, e.g. DS's NeurIPS abstract), ``patch`` None for every patch."""
    b = pd.read_csv(REPO_ROOT / "results" / "baselines" / "baselines.csv")
    b = b[b.dataset == dataset]
    if patch is not None:
        b = b[b.patch == patch]
    return b.drop_duplicates("method").reset_index(drop=True)


def flops_text(flops) -> str:
    """'1.2e14' (training FLOPs, two significant digits); '—' when unknown."""
    return "—" if flops is None or pd.isna(flops) else f"{float(flops):.1e}".replace("e+", "e")


def _flops(runs: pd.DataFrame) -> pd.Series:
    from .scaling import run_flops   # the one count of training compute

    return pd.Series(run_flops(runs).values, index=runs["run"].values) if len(runs) else pd.Series(dtype=float)


def shipped_run(results=None) -> pd.Series | None:
    """Our strongest shipped model (:func:`~bagcert_lib.results.shipped_headline`: the headline
    configuration with the most training compute) as a :func:`load_runs` row with ``training_flops``
    filled in; None when no model is shipped in ``results``."""
    try:
        path = shipped_headline(results)
    except FileNotFoundError:
        return None
    runs = load_runs(results)
    row = runs[runs.path == str(path)]
    if row.empty or not (path / "certification.csv").is_file():
        return None
    return row.assign(training_flops=_flops(row).values).iloc[0]


def shipped_label(r) -> str:
    return (f"strongest shipped: RF {r.rf}, M {r.margin:g}, width {r.width}, {r.epochs} epochs, "
            f"{flops_text(r.training_flops)} FLOPs (ours)")


def made_from(runs: pd.DataFrame) -> str:
    """One line saying what a figure was made from: per profile and model, width, epochs and the
    training FLOPs of each run (from :func:`~bagcert_lib.scaling.run_flops`)."""
    if runs.empty:
        return "no finished runs"
    runs = runs.assign(training_flops=_flops(runs).values,
                       method=runs["method"].fillna("bagcert"))
    span = lambda v, f=str: f(v.min()) if f(v.min()) == f(v.max()) else f"{f(v.min())}–{f(v.max())}"  # noqa: E731
    if runs.groupby(["method", "profile", "width", "epochs"]).ngroups > 4:    # many scales: one line per model
        return "; ".join(
            f"{len(g)} {'BagCert' if method == 'bagcert' else method} runs of profiles "
            f"{', '.join(dict.fromkeys(g.profile))} (width {span(g.width)}, {span(g.epochs)} epochs, "
            f"{span(g.training_flops, flops_text)} training FLOPs)"
            for method, g in runs.groupby("method", sort=False))
    parts = []
    for (method, profile, width, epochs), g in runs.groupby(["method", "profile", "width", "epochs"], sort=False):
        what = "BagCert" if method == "bagcert" else f"{method.replace('ds-', 'DS ')} (ResNet-18)"
        parts.append(f"{len(g)} {what} run{'s' if len(g) > 1 else ''} of profile {profile} (width {width}, "
                     f"{epochs} epochs, {span(g.training_flops, flops_text)} training FLOPs"
                     f"{' each' if len(g) > 1 else ''})")
    return "; ".join(parts)


def paper_marks(ax, paper: pd.DataFrame, labels: list, x_of=None):
    """Draw the paper's stated values of a per-patch figure on ``ax`` (red, hollow)."""
    x_of = x_of or {lab: i for i, lab in enumerate(labels)}
    kw = dict(facecolors="none", edgecolors=PAPER_COLOR, linewidths=2, zorder=5)
    ds = paper[(paper.method == "DS column") & paper.patch.isin(labels)]
    for _, p in paper.iterrows():
        pct = p.certified_accuracy * 100
        who = f"BagCert RF {p.rf:g}, M {p.margin:g}" if p.method == "BagCert" else p.method
        if p.patch == "every" and p.relation == "≥":
            ax.axhline(pct, color=PAPER_COLOR, ls="--", lw=1.5,
                       label=f"paper: {who} ≥ {pct:.0f} % at every shape (§4)")
        elif p.relation == ">" and p.patch in x_of:
            ax.axvline(x_of[p.patch], color=PAPER_COLOR, ls=":", lw=2,
                       label=f"paper: {who} non-trivial up to {p.patch.replace('x', '×')} (§4)")
        elif p.method == "BagCert" and p.patch in x_of:
            ax.scatter(x_of[p.patch], pct, marker="*", s=260, **kw,
                       label=f"paper: {who}, {pct:.0f} % at {p.patch.replace('x', '×')} (§4)")
    if len(ds):
        ax.scatter([x_of[q] for q in ds.patch], ds.certified_accuracy * 100, marker="X", s=150, **kw,
                   label=f"paper: DS column ≈ 0 % at {' and '.join(q.replace('x', '×') for q in ds.patch)} (§4)")


def sweep_panels(cert: pd.DataFrame, patches: list, condition: str = "3.2",
                 smoothing: pd.DataFrame | None = None, shipped: pd.DataFrame | None = None,
                 paper: pd.DataFrame | None = None, reported: pd.DataFrame | None = None,
                 flops: dict | None = None):
    """Figures 3 and 4: certified accuracy per patch shape (w × h); top, the RF sweep at the
    headline margin; bottom, the margin sweep at the headline RF (heaviside, seed 0, σ 0).
    ``smoothing``: certification rows of our DS runs (dashed); ``shipped``: those of our strongest
    shipped model (thick black); ``paper``: :func:`paper_values` (red, hollow); ``reported``:
    :func:`reported_baselines` at their patch (grey, hollow); ``flops``: training FLOPs per run,
    for the legend. Legends sit outside the data: each panel's sweep beside it, the rest below."""
    g = grids()
    rf0, m0 = g["headline"]["rf"], g["headline"]["margin"]
    labels = [patch_label(p) for p in patches]
    x = list(range(len(labels)))
    flops = flops or {}
    base = cert.query(f"{GRID_RUNS} and condition == @condition")
    fig, axes = plt.subplots(2, 1, figsize=(FIG_WIDTH, 10.5), sharex=True, layout="constrained")
    panels = ((axes[0], base.query("margin == @m0"), "rf", f"receptive fields at margin M = {m0:g}", "RF"),
              (axes[1], base.query("rf == @rf0"), "margin", f"train margins at RF {rf0}", "M"))
    shared = {}
    for ax, df, key, panel_title, legend in panels:
        cmap = plt.get_cmap("viridis")
        values = sorted(df[key].unique())
        lines = []
        for i, value in enumerate(values):
            runs = df[df[key] == value]
            acc = runs.set_index("patch").reindex(labels)["certified_accuracy"] * 100
            lines += ax.plot(x, acc.values, marker="o", ms=5, lw=1.8, color=cmap(i / max(1, len(values) - 1) * 0.9),
                             label=f"{legend} {value:g}")
        for (run, _), ds in ([] if smoothing is None else smoothing.groupby(["run", "method"])):
            acc = ds.set_index("patch").reindex(labels)["certified_accuracy"] * 100
            ax.plot(x, acc.values, ls="--", marker="x", ms=7, lw=1.8, color="0.2" if "column" in run else "0.55",
                    label=f"{smoothing_label(ds.iloc[0])}, {flops_text(flops.get(run))} FLOPs (ours)")
        if shipped is not None and len(shipped):
            r = shipped.iloc[0].copy()
            r["training_flops"] = flops.get(r.run)
            acc = shipped.query("condition == @condition").set_index("patch").reindex(labels)
            acc = acc["certified_accuracy"] * 100
            ax.plot(x, acc.values, color=SHIPPED_COLOR, lw=3, marker="s", ms=5, zorder=4, label=shipped_label(r))
        for _, b in (reported if reported is not None else pd.DataFrame()).iterrows():
            if b.patch in labels:
                ax.scatter(labels.index(b.patch), b.certified_accuracy * 100, s=110, linewidths=2,
                           marker=REPORTED_MARKERS.get(b.method, "o"), facecolors="none",
                           edgecolors=REPORTED_COLOR, zorder=5,
                           label=f"{b.method}, {b.patch.replace('x', '×')} (reported)")
        if paper is not None:
            paper_marks(ax, paper, labels)
        ax.set_title(f"BagCert, {panel_title} (Condition {condition})")
        ax.set_ylim(-3, 100)
        ax.set_ylabel("Certified accuracy (%)")
        ax.grid(alpha=0.3)
        if lines:
            ax.legend(handles=lines, loc="upper left", bbox_to_anchor=(1.01, 1), title="ours")
        else:
            ax.text(0.5, 0.5, "no runs yet", ha="center", transform=ax.transAxes)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if h not in lines:
                shared.setdefault(lab, h)
    axes[1].set_xticks(x, [lab.replace("x", "×") for lab in labels], rotation=45)
    axes[1].set_xlabel("Patch size, width × height (pixels)")
    if shared:
        fig.legend(shared.values(), shared.keys(), loc="outside lower center", ncol=1)
    return fig


def sweep_figure(patches: list, condition: str = "3.2", results=None, profile=None, figure: str | None = None):
    """Figures 3 and 4 from the results folder: (runs shown, figure, table). The table holds
    certified accuracy per model and patch shape as fractions — the runs drawn (BagCert per
    (RF, M) of the two sweeps), our DS runs and our strongest shipped model; show it with
    ``readable(table, percent=table.columns, percent_in_header=False)``. ``figure`` ("figure3")
    draws the paper's stated values (:func:`paper_values`) and, for Figure 3, the reported
    baselines at their patch."""
    patches = [_pair(p, "patch") for p in patches]
    g = grids()
    runs = grid_runs(results, profile)
    ds_runs = smoothing_runs(results, runs.profile.iloc[0] if len(runs) else profile)
    every = load_certification(results)
    cert = every.query("run in @runs.run")
    ds = every.query("run in @ds_runs.run and condition == 'DS'")
    ship = shipped_run(results)
    shipped = every.query("run == @ship.run") if ship is not None and ship.run not in set(runs.run) else None
    shown = pd.concat([runs, ds_runs] + ([] if shipped is None else [ship.to_frame().T]))
    flops = _flops(shown).to_dict()
    paper = paper_values(figure) if figure else None
    reported = reported_baselines(patch=None) if figure == "figure3" else None
    fig = sweep_panels(cert, patches, condition, smoothing=ds, shipped=shipped, paper=paper,
                       reported=reported, flops=flops)
    columns = [patch_label(p) for p in patches]
    rf0, m0 = g["headline"]["rf"], g["headline"]["margin"]
    drawn = cert.query(f"condition == @condition and (rf == @rf0 or margin == @m0)")
    table = drawn.pivot_table(index=["rf", "margin"], columns="patch",
                              values="certified_accuracy").reindex(columns=columns)
    table.index = [f"RF {rf}, M {m:g}" for rf, m in table.index]
    parts = [table]
    if len(ds):
        parts.append(ds.assign(model=[f"{smoothing_label(r)} (ours)" for _, r in ds.iterrows()]).pivot_table(
            index="model", columns="patch", values="certified_accuracy").reindex(columns=columns))
    if shipped is not None:
        parts.append(shipped.query("condition == @condition").assign(
            model=f"shipped: RF {ship.rf}, M {ship.margin:g}, width {ship.width}, {ship.epochs} epochs").pivot_table(
            index="model", columns="patch", values="certified_accuracy").reindex(columns=columns))
    table = pd.concat(parts)
    table.columns.name = None
    table.index.name = "model"
    return shown, fig, table


def baselines_at_our_scale(results=None, profile=None, condition: str = "3.2", patch: str = "5x5") -> dict:
    """Are the baselines dominated at our scale (§4 says they are in Figures 2 and 3)? Compares
    BagCert's best grid model at ``patch`` (Condition ``condition``) with each of our DS runs, with
    the training FLOPs of each; ``column_above_to``: the largest square k×k such that our DS column
    run certifies more than every BagCert model of the grid at every square up to k×k;
    ``column_short_wide``: DS column's certified accuracy at the paper's short-but-wide shapes
    (24×1, 12×2); ``shipped``: our strongest shipped model at ``patch``. ``sentence``: all of it
    in one plain sentence (None values where a run is missing)."""
    runs = grid_runs(results, profile)
    ds_runs = smoothing_runs(results, runs.profile.iloc[0] if len(runs) else profile)
    every = load_certification(results)
    flops = _flops(pd.concat([runs, ds_runs]))
    bag = every.query("run in @runs.run and condition == @condition")
    ds = every.query("run in @ds_runs.run and condition == 'DS'")
    out = {"patch": patch, "condition": condition, "profile": runs.profile.iloc[0] if len(runs) else None,
           "best": None, "ds": {}, "dominated": None, "column_above_to": None, "column_short_wide": {},
           "shipped": None, "sentence": None}
    at = bag[bag.patch == patch]
    if at.empty:
        return out
    b = at.loc[at.certified_accuracy.idxmax()]
    out["best"] = {"run": b.run, "rf": int(b.rf), "margin": float(b.margin),
                   "certified": float(b.certified_accuracy), "flops": float(flops[b.run])}
    for run, d in ds.groupby("run"):
        kind = d.method.iloc[0].removeprefix("ds-")
        row = d[d.patch == patch]
        if len(row):
            out["ds"][kind] = {"run": run, "label": smoothing_label(d.iloc[0]),
                               "certified": float(row.certified_accuracy.iloc[0]), "flops": float(flops[run])}
    if out["ds"]:
        out["dominated"] = all(out["best"]["certified"] >= v["certified"] for v in out["ds"].values())
    if "column" in out["ds"]:
        col = ds[ds.run == out["ds"]["column"]["run"]].set_index("patch").certified_accuracy
        best_per = bag.groupby("patch").certified_accuracy.max()
        k_above = None
        for k in grids()["square_patches"]:
            lab = patch_label(k)
            if lab in col and lab in best_per and col[lab] > best_per[lab]:
                k_above = k
            else:
                break
        out["column_above_to"] = k_above
        out["column_short_wide"] = {lab: float(col[lab]) for lab in ("24x1", "12x2") if lab in col}
    ship = shipped_run(results)
    if ship is not None and ship.run not in set(runs.run):
        c = every.query("run == @ship.run and patch == @patch and condition == @condition")
        if len(c):
            out["shipped"] = {"run": ship.run, "width": int(ship.width), "epochs": int(ship.epochs),
                              "certified": float(c.certified_accuracy.iloc[0]), "flops": float(ship.training_flops)}
    out["sentence"] = _dominance_sentence(out)
    return out


def _dominance_sentence(d: dict) -> str:
    pct = lambda v: f"{v * 100:.1f} %"                                    # noqa: E731
    run = lambda v: f"our {v['label']} run ({pct(v['certified'])}; {flops_text(v['flops'])} FLOPs)"  # noqa: E731
    p, b = d["patch"].replace("x", "×"), d["best"]
    verdict = {True: "are dominated", False: "are not all dominated", None: "have no measured run"}[d["dominated"]]
    s = (f"At our scale (profile {d['profile']}) the baselines {verdict}: BagCert's best model of the grid "
         f"at {p} (RF {b['rf']}, M {b['margin']:g}; {flops_text(b['flops'])} training FLOPs) certifies "
         f"{pct(b['certified'])}")
    beats = [v for v in d["ds"].values() if b["certified"] >= v["certified"]]
    loses = [v for v in d["ds"].values() if b["certified"] < v["certified"]]
    if beats:
        s += ", more than " + " and ".join(run(v) for v in beats)
    if loses:
        s += (" but" if beats else ",") + " less than " + " and ".join(run(v) for v in loses)
        if d["column_above_to"] and any("column" in v["label"] for v in loses):
            k = d["column_above_to"]
            s += f", which lies above every BagCert curve of the grid up to {k}×{k}"
    if d["column_short_wide"]:
        s += (" — though, as the paper says when it sets column smoothing aside, short-but-wide patches "
              "defeat it (ours: " + ", ".join(f"{pct(v)} at {k.replace('x', '×')}"
                                               for k, v in d["column_short_wide"].items()) + ")")
    s += "."
    if d["shipped"]:
        v = d["shipped"]
        s += (f" Our strongest shipped BagCert model (width {v['width']}, {v['epochs']} epochs, "
              f"{flops_text(v['flops'])} FLOPs) certifies {pct(v['certified'])} at {p}.")
    return s


#: Column and index names in words, for every table in the book (:func:`readable`).
WORDS = {
    "rf": "receptive field", "margin": "margin M", "head": "head", "sigma": "σ", "seed": "seed",
    "seeds": "seeds", "profile": "profile", "width": "width", "epochs": "epochs", "epoch": "epoch",
    "method": "method", "model": "model", "device": "machine", "run": "run", "runs": "runs",
    "n": "images", "attack_n": "images attacked", "images": "images",
    "clean": "clean accuracy", "clean_accuracy": "clean accuracy",
    "certified": "certified accuracy", "certified_accuracy": "certified accuracy",
    "certified (3.2)": "certified accuracy, Condition 3.2",
    "certified (3.3)": "certified accuracy, Condition 3.3",
    "certified_global_accuracy": "certified accuracy, Condition 3.3",
    "certified_accuracy_5x5": "certified accuracy, 5×5",
    "adversarial": "adversarial accuracy", "adversarial_accuracy": "adversarial accuracy",
    "attack_clean_accuracy": "clean accuracy", "attack_certified_accuracy": "certified accuracy",
    "certified_broken": "certified but broken", "certified but broken": "certified but broken",
    "clean_mean": "mean clean accuracy", "certified_mean": "mean certified accuracy",
    "near_chance": "seeds near chance", "certify_nothing": "seeds certifying nothing",
    "hours": "training hours", "wall_s": "training seconds", "training_flops": "training FLOPs", "seconds": "seconds",
    "forward_s": "forward pass (s)", "certify_s": "certification (s)",
    "seconds_per_epoch": "seconds per epoch", "training_hours": "training (h)",
    "certification_hours": "certification (h)", "attack_hours": "attack (h)", "total_hours": "total (h)",
    "parameters": "parameters", "certify_over_forward": "certification / forward pass",
    "patch": "patch", "condition": "condition", "locator": "where in the paper",
}

_PERCENT = re.compile(r"accuracy|^clean|^certified(?! but)|^adversarial")


def _words(name) -> str:
    if name is None:
        return None
    s = str(name)
    for prefix in ("ours: ", "paper: "):          # Table 1's "ours: forward_s" and similar
        if s.startswith(prefix):
            return prefix + _words(s[len(prefix):])
    return WORDS.get(s, s.replace("_", " ").replace("x", "×") if re.fullmatch(r"\d+x\d+", s) else
                     s.replace("_", " "))


def _number(v, name, precision: int) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if name in ("margin", "sigma", "theta") and isinstance(v, (int, float, np.number)):
        return f"{v:g}"
    if isinstance(v, (int, np.integer)):
        return f"{v:,}"
    if isinstance(v, (float, np.floating)):
        return f"{v:,.{precision}f}" if abs(v) >= 1 or v == 0 else f"{v:.{max(precision, 2)}g}"
    return str(v)


def readable(df: pd.DataFrame, percent=None, precision: int = 1, words: dict | None = None,
             index: bool = True, formats: dict | None = None, percent_in_header: bool = True):
    """A table for readers: fractions as percent with one decimal (accuracy columns, or those named
    in ``percent``; header gets "(%)"), margins as in the paper (0.25), other numbers with
    ``precision`` decimals and thousands separators, missing values as "—", and headers in words
    (:data:`WORDS`, updated by ``words``). Returns a DataFrame of strings (deterministic, so a
    cell compared by ``pytest --nbval`` stays stable). ``formats``: a format string per column
    (e.g. ``{"hours": "{:.2f}"}``). ``index=False``: a Styler without the index column."""
    names = {**WORDS, **(words or {})}
    pct = set(percent) if percent is not None else {
        c for c in df.columns if _PERCENT.search(str(c)) and pd.api.types.is_float_dtype(df[c])}
    out = pd.DataFrame(index=df.index)
    for c in df.columns:
        if formats and c in formats:
            out[c] = ["—" if pd.isna(v) else formats[c].format(v) for v in df[c]]
        elif c in pct:
            out[c] = [("—" if pd.isna(v) else f"{v * 100:.1f}") for v in df[c]]
        else:
            out[c] = [_number(v, c, precision) for v in df[c]]

    def header(c):
        w = names.get(str(c)) if str(c) in names else _words(c)
        return f"{w} (%)" if c in pct and percent_in_header and not w.endswith("(%)") else w

    out.columns = [header(c) for c in df.columns]
    if not index:
        return (out.reset_index(drop=True).style.hide(axis="index").set_uuid("readable")
                .set_table_attributes('class="dataframe"'))   # the book's table style, as with an index
    if isinstance(df.index, pd.MultiIndex):
        levels = [[_number(v, n, precision) for v in df.index.get_level_values(i)]
                  for i, n in enumerate(df.index.names)]
        out.index = pd.MultiIndex.from_arrays(levels, names=[header(n) if n else n for n in df.index.names])
    else:
        out.index = pd.Index([_number(v, df.index.name, precision) for v in df.index],
                             name=header(df.index.name) if df.index.name else None)
    return out
