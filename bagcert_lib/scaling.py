"""How BagCert's accuracy grows with training compute, at the headline setting (RF 7, M 0.5).

Training FLOPs are counted from the model (``model.conv_macs``: multiply-accumulates of every
convolution at the model's resolution), × 2 FLOPs per MAC, × 3 for forward and backward, × the
images seen. Accuracies are the 5 × 5 rows of each run's certification.csv (whole test set).

Three curve forms in x = log₁₀ FLOPs, each fitted by least squares to every run (seeds as separate
points) and bootstrapped over runs:

* ``log-linear``: acc = a + b·x, a straight line in log-compute, with no ceiling of its own;
* ``saturating``: acc = A − B·e^(−k(x − x₀)), its ceiling A fitted from the data;
* ``power-law error``: 1 − acc = c·FLOPs^(−α), the error falling as a power of compute.

Each is held below a bound that needs no data: clean accuracy ≤ 100 %, and certified accuracy ≤
clean accuracy at every compute (an image is certified only if it is classified correctly), so a
certified curve is capped by the clean curve of the same form fitted to the same runs, and a
saturating certified curve's ceiling by the clean one's. The spread across forms (:func:`spread`),
with each form's bootstrap band, is the prediction's uncertainty at the paper's compute.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .config import grids
from .results import load_certification, load_runs, segment_classes

#: The paper's CIFAR-10 headline model (App. A.1, §4): width 768, 350 epochs, RF 7, M 0.5.
PAPER = {"width": 768, "epochs": 350, "rf": 7, "margin": 0.5, "n_train": 50_000, "batch_size": 96,
         "clean": 0.86, "certified": 0.60}
#: Profiles whose RF 7 / M 0.5 heaviside runs belong to the study.
STUDY_PROFILES = ("cpu", "cpu_long", "scaling", "gpu", "paper")
FORMS = ("log-linear", "saturating", "power-law error")
#: Columns the study reads from certification.csv: (square side, condition) -> name.
COLUMNS = {(5, "3.2"): "certified", (5, "3.3"): "certified_global", (10, "3.2"): "certified_10x10"}
#: Figure 4's patches: every rectangle of 24 pixels.
ASPECT_PIXELS = 24


STUDY_COLUMNS = ["run", "path", "profile", "width", "epochs", "seed", "flops", "wall_h", "device",
                 "cpu_class", "clean", *COLUMNS.values(), "certified_aspect_min"]


def training_flops(width: int, epochs: float, rf: int = 7, n_train: int = 50_000,
                   batch_size: int = 96) -> float:
    """Training FLOPs of a CIFAR-10 region scorer run (drop_last batches, as the trainer)."""
    from .model import cifar_scorer, conv_macs
    from .model import training_flops as flops

    macs = conv_macs(cifar_scorer(rf, int(width)))
    return flops(macs, int(epochs) * (n_train // batch_size) * batch_size)


def run_flops(runs: pd.DataFrame) -> pd.Series:
    """Training FLOPs of each :func:`~bagcert_lib.results.load_runs` row: its provenance.json's
    count, else (runs that predate the count) counted from the model and config (CIFAR-10 region
    scorer, batch 96, its training images)."""
    def one(r):
        if pd.notna(r.training_flops):
            return float(r.training_flops)
        n = r.n_train if pd.notna(r.n_train) else r.train_size if pd.notna(r.train_size) else 50_000
        return training_flops(r.width, r.epochs, r.rf, int(n))
    return runs.apply(one, axis=1).astype(float) if len(runs) else pd.Series(dtype=float)


def paper_flops() -> float:
    p = PAPER
    return training_flops(p["width"], p["epochs"], p["rf"], p["n_train"], p["batch_size"])


def run_cpu_class(prov: dict) -> str | None:
    """The CPU class a run trained on (``runtime.cpu_class``); ``"mixed: a, b"`` when its
    segments (resumed on other machines) differ; None when not recorded."""
    classes = list(dict.fromkeys(c for c in segment_classes(prov) if c))
    if not classes:
        return None
    return classes[0] if len(classes) == 1 else "mixed: " + ", ".join(classes)


def _headline_runs(results=None) -> pd.DataFrame:
    """load_runs' rows of the study's profiles at the headline setting (RF 7, M 0.5, heaviside, σ 0)."""
    h = grids()["headline"]
    runs = load_runs(results)
    if runs.empty:
        return runs
    return runs[runs.profile.isin(STUDY_PROFILES) & (runs.method == "bagcert") & (runs.rf == h["rf"])
                & (runs.margin == h["margin"]) & (runs["head"] == "heaviside") & (runs.sigma == 0)]


def learning_curves(results=None) -> pd.DataFrame:
    """Per epoch of every headline-setting run, finished or still training: held-out clean and
    certified 5x5 accuracy (history.csv: the fixed 1,000-image subset of the test set) at the
    training FLOPs spent so far. A point inside a run is not what a run of that compute ends at:
    its cosine schedule has not yet decayed."""
    rows = []
    for r in _headline_runs(results).itertuples():
        hist = Path(r.path) / "history.csv"
        if not hist.is_file():
            continue
        h = pd.read_csv(hist)
        planned = training_flops(r.width, r.epochs, r.rf)
        rows.append(pd.DataFrame({
            "run": r.run, "width": int(r.width), "epochs": int(r.epochs), "seed": int(r.seed),
            "finished": bool(r.finished), "epoch": h.epoch,
            "flops": planned * h.epoch / int(r.epochs), "clean": h.clean_accuracy,
            "certified": h.certified_accuracy, "certified_global": h.certified_global_accuracy,
            "epoch_s": h.epoch_s if "epoch_s" in h else np.nan}))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame()


#: Epochs whose mean duration is the pace of a run still training.
PACE_EPOCHS = 3


def runs_in_progress(results=None) -> pd.DataFrame:
    """The headline-setting runs still training: epochs done of planned, FLOPs so far and planned,
    the last held-out accuracies, hours so far and the CPU class (they join the study when done),
    and the hours still to go at the pace of the last :data:`PACE_EPOCHS` epochs, on the CPU
    class of the latest segment (``pace_cpu_class``; another class trains at another pace)."""
    curves = learning_curves(results)
    if curves.empty:
        return curves
    runs = _headline_runs(results).set_index("run")
    live = curves[~curves.finished]
    rows = []
    for run, g in live.groupby("run", sort=False):
        r = g.iloc[-1]
        prov = json.loads((Path(runs.loc[run, "path"]) / "provenance.json").read_text())
        pace = g.epoch_s.tail(PACE_EPOCHS).mean()
        rows.append({"run": run, "width": r.width, "epochs_done": r.epoch, "epochs": r.epochs,
                     "flops": r.flops, "planned_flops": r.flops * r.epochs / r.epoch,
                     "clean": r.clean, "certified": r.certified,
                     "wall_h": prov.get("wall_s", np.nan) / 3600, "cpu_class": run_cpu_class(prov),
                     "to_go_h": (r.epochs - r.epoch) * pace / 3600,
                     "pace_cpu_class": segment_classes(prov)[-1]})
    return pd.DataFrame(rows)


def study_runs(results=None) -> pd.DataFrame:
    """One row per finished, certified run at the headline setting (RF 7, M 0.5, heaviside, σ 0):
    config, training FLOPs, wall-hours and CPU, and its 5x5 (and 10x10, aspect-ratio) accuracies."""
    runs = _headline_runs(results)
    if runs.empty:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    runs = runs[runs.finished.fillna(False).astype(bool) & runs.certified.fillna(False).astype(bool)]
    cert = load_certification(results)
    cert = cert[cert.run.isin(runs.run)]
    runs = runs.assign(flops=run_flops(runs))
    rows = []
    for r in runs.itertuples():
        prov = json.loads((Path(r.path) / "provenance.json").read_text())
        c = cert[cert.run == r.run]
        five = c[(c.patch_h == 5) & (c.patch_w == 5) & (c.condition == "3.2")]
        row = {"run": r.run, "path": r.path, "profile": r.profile, "width": int(r.width),
               "epochs": int(r.epochs), "seed": int(r.seed),
               "flops": r.flops,
               "wall_h": (r.wall_s or np.nan) / 3600, "device": r.device,
               "cpu_class": run_cpu_class(prov),
               "clean": float(five.clean_accuracy.iloc[0]) if len(five) else np.nan}
        for (side, cond), name in COLUMNS.items():
            v = c[(c.patch_h == side) & (c.patch_w == side) & (c.condition == cond)].certified_accuracy
            row[name] = float(v.iloc[0]) if len(v) else np.nan
        aspect = (c.patch_h * c.patch_w == ASPECT_PIXELS) & (c.patch_h != c.patch_w)
        v = c[aspect & (c.condition == "3.2")].certified_accuracy
        row["certified_aspect_min"] = float(v.min()) if len(v) else np.nan
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=STUDY_COLUMNS)
    return pd.DataFrame(rows).sort_values(["flops", "seed"]).reset_index(drop=True)


# ---------------------------------------------------------------- fits (numpy least squares)
_K = np.logspace(-2, 1.3, 400)          # the saturating form's rate k, profiled out on a grid


def _linear(x, y):
    """Least-squares line y = a + b x (vectorised over leading axes of x and y)."""
    xm, ym = x.mean(-1, keepdims=True), y.mean(-1, keepdims=True)
    var = ((x - xm) ** 2).sum(-1)
    b = ((x - xm) * (y - ym)).sum(-1) / np.where(var > 0, var, np.nan)
    return ym[..., 0] - b * xm[..., 0], b


def _ceiling(bound) -> float:
    """The highest accuracy a curve may tend to: 100 % for clean accuracy; for certified accuracy
    the clean curve's own ceiling where it has one (certified ≤ clean at every compute)."""
    return float(bound["A"]) if bound is not None and bound["form"] == "saturating" else 1.0


def fit(x, y, form: str = "saturating", bound: dict | None = None) -> dict:
    """Least-squares fit of ``form`` to accuracies ``y`` (0..1) at x = log10(FLOPs).

    ``bound``: the clean-accuracy fit (same form) that a certified-accuracy curve may not exceed
    (certified ≤ clean: a certified image is one classified correctly); None for clean accuracy,
    bounded by 100 %. The saturating form's ceiling A is fitted, and held at the bound when the
    data would put it higher (``at_bound``: then the data do not determine the ceiling)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if form == "saturating":            # for each k a linear fit in z = exp(-k x); keep the best k
        cap = _ceiling(bound)
        x0 = x.min()
        z = np.exp(-_K[:, None] * (x - x0)[None, :])
        a, b = _linear(z, np.broadcast_to(y, z.shape))
        over = ~(a <= cap)                # above the ceiling's bound (or no fit): refit with A = cap
        b = np.where(over, ((y - cap) * z).sum(-1) / (z ** 2).sum(-1), b)
        a = np.where(over, cap, a)
        sse = ((a[:, None] + b[:, None] * z - y) ** 2).sum(-1)
        i = int(np.nanargmin(sse))
        return {"form": form, "A": a[i], "B": -b[i], "k": _K[i], "x0": x0, "bound": bound,
                "at_bound": bool(over[i])}
    if form == "power-law error":       # 1 - acc = exp(a) FLOPs^(b / ln 10): error falls to 0
        a, b = _linear(x, np.log(np.clip(1 - y, 1e-6, None)))
        return {"form": form, "a": a, "b": b, "bound": bound}
    if form == "log-linear":
        a, b = _linear(x, y)
        return {"form": form, "a": a, "b": b, "bound": bound}
    raise ValueError(f"unknown form {form!r}; choose one of {FORMS}")


def evaluate(params: dict, x, bounded: bool = True) -> np.ndarray:
    """The fitted curve at x = log10(FLOPs), held within [0, its bound]: 100 %, and for certified
    accuracy the clean curve of the same form (``bounded=False``: the curve itself, unheld)."""
    x = np.asarray(x, float)
    f = params["form"]
    if f == "saturating":
        y = params["A"] - params["B"] * np.exp(-params["k"] * (x - params["x0"]))
    elif f == "power-law error":
        y = 1 - np.exp(params["a"] + params["b"] * x)
    else:
        y = params["a"] + params["b"] * x
    if not bounded:
        return y
    if params.get("bound") is not None:
        y = np.minimum(y, evaluate(params["bound"], x))
    return np.clip(y, 0, 1)


def bootstrap(x, y, at, form: str = "saturating", n: int = 1000, seed: int = 0,
              clean=None) -> np.ndarray:
    """(n, len(at)) predictions of fits to runs resampled with replacement (degenerate samples,
    with fewer than 3 distinct computes, are drawn again). ``clean``: the runs' clean accuracy,
    for a certified-accuracy curve bounded by the clean curve fitted to the same resample."""
    x, y, at = np.asarray(x, float), np.asarray(y, float), np.asarray(at, float)
    if len(np.unique(x)) < 3:
        raise ValueError(f"a fit needs runs at 3 or more computes; have {len(np.unique(x))}")
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        i = rng.integers(0, len(x), len(x))
        if len(np.unique(x[i])) < 3:
            continue
        bound = None if clean is None else fit(x[i], np.asarray(clean, float)[i], form)
        out.append(evaluate(fit(x[i], y[i], form, bound), at))
    return np.array(out)


PREDICT_COLUMNS = ["metric", "form", "prediction", "low", "high", "rmse", "ceiling", "at_bound", "unbounded"]


def _xy(study, metric):
    x, y, clean = np.log10(study.flops.to_numpy(float)), study[metric].to_numpy(float), study.clean.to_numpy(float)
    ok = np.isfinite(y) & np.isfinite(clean)
    return x[ok], y[ok], (None if metric == "clean" else clean[ok])


def curves(study: pd.DataFrame, metric: str) -> dict:
    """Each form's fit of ``metric`` to every run: {form: params}."""
    x, y, clean = _xy(study, metric)
    return {form: fit(x, y, form, None if clean is None else fit(x, clean, form)) for form in FORMS}


def predict(study: pd.DataFrame, metric: str, at_flops: float, n_boot: int = 1000,
            level: float = 0.95) -> pd.DataFrame:
    """Each form's prediction of ``metric`` at ``at_flops`` with its bootstrap band, its fit error
    on our runs, and the saturating form's fitted ceiling (``at_bound``: held at its bound);
    ``unbounded``: the curve's own value there, before the bound holds it."""
    x, y, clean = _xy(study, metric)
    if len(np.unique(x)) < 3:            # not enough computes to fit a 3-parameter curve yet
        return pd.DataFrame(columns=PREDICT_COLUMNS)
    rows = []
    for form, p in curves(study, metric).items():
        boot = bootstrap(x, y, [np.log10(at_flops)], form, n_boot, clean=clean)[:, 0]
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        rows.append({"metric": metric, "form": form, "prediction": float(evaluate(p, np.log10(at_flops))),
                     "low": lo, "high": hi, "rmse": float(np.sqrt(np.mean((evaluate(p, x) - y) ** 2))),
                     "ceiling": p["A"] if form == "saturating" else np.nan,
                     "at_bound": p.get("at_bound", False),
                     "unbounded": float(evaluate(p, np.log10(at_flops), bounded=False))})
    return pd.DataFrame(rows, columns=PREDICT_COLUMNS)


def spread(pred: pd.DataFrame) -> pd.DataFrame:
    """Per metric, the uncertainty across curve forms: the lowest and highest form's prediction,
    and the range that holds every form's bootstrap band (``low``, ``high``)."""
    if pred.empty:
        return pd.DataFrame(columns=["lowest", "highest", "low", "high", "forms"])
    g = pred.groupby("metric", sort=False)
    return pd.DataFrame({"lowest": g.prediction.min(), "highest": g.prediction.max(),
                         "low": g.low.min(), "high": g.high.max(), "forms": g.form.count()})


def decades(study: pd.DataFrame, at_flops: float) -> float:
    """How far ``at_flops`` lies beyond the study's largest run, in decades of compute."""
    return float(np.log10(at_flops / study.flops.max()))


def span(study: pd.DataFrame) -> float:
    """Decades of compute between the study's smallest and largest run."""
    return float(np.log10(study.flops.max() / study.flops.min()))


def trend(study: pd.DataFrame, metric: str, threshold: float | None = None,
          n_boot: int = 1000) -> dict:
    """Does ``metric`` grow with compute, and does it reach ``threshold`` at the paper's compute
    across every curve form? For the claims that do not hold at our scale (10x10, aspect ratios)."""
    s = study.dropna(subset=[metric]).groupby("flops")[metric].mean()
    out = {"metric": metric, "computes": len(s), "smallest": None, "largest": None}
    if len(s) < 2:
        return out
    out.update(smallest=(s.index[0], s.iloc[0]), largest=(s.index[-1], s.iloc[-1]),
               grows=bool(np.corrcoef(np.log10(s.index), s.values)[0, 1] > 0))
    pred = predict(study, metric, paper_flops(), n_boot)
    if len(pred):
        r = spread(pred).iloc[0]
        out.update(lowest=r.lowest, highest=r.highest, low=r.low, high=r.high)
        if threshold is not None:
            out["reaches"] = ("yes" if r.low >= threshold else "no" if r.high < threshold
                              else "undecided")
    return out


def describe_trend(t: dict) -> str:
    """One sentence for the claims table."""
    if t.get("smallest") is None:
        return "the compute study has too few runs to say"
    (c0, v0), (c1, v1) = t["smallest"], t["largest"]
    text = (f"in the compute study (RF 7, M 0.5) it {'grows' if t['grows'] else 'does not grow'} "
            f"from {v0 * 100:.1f} % at {c0:.1e} FLOPs to {v1 * 100:.1f} % at {c1:.1e}")
    if "lowest" in t:
        text += (f"; at the paper's compute the curve forms predict {t['lowest'] * 100:.1f}–{t['highest'] * 100:.1f} % "
                 f"(with their bootstrap bands {t['low'] * 100:.1f}–{t['high'] * 100:.1f} %), an extrapolation")
    return text
