"""One results schema, read by every figure and table: run directories -> pandas DataFrames.

Each run directory (see ``train.py`` and ``runs.py``) contributes:

* :func:`load_runs` — one row per run: its config, final metrics, provenance and attack summary;
* :func:`load_certification` — one row per (run, patch shape, condition) from certification.csv;
* :func:`load_history` — one row per (run, epoch) from history.csv;
* :func:`load_retrained` — runs trained again to ship their weights, before against after.

Every row carries the run's ``run`` name and the config columns (:data:`CONFIG_COLUMNS`: rf,
margin, head, sigma, seed, profile, width, epochs, train_size, method, ablation_size, theta), so a
figure selects its runs with ordinary pandas queries.
The files are read through :mod:`.rundir`: a file that cannot be read raises an error naming it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from . import rundir
from .rundir import results_dir

#: Which profile a figure shows when none is asked for: the first with finished runs, so a figure
#: never mixes scales. ``cpu_long`` (one headline run) and ``gpu`` are shown beside, not instead.
PROFILE_ORDER = ("paper", "cpu", "gpu", "smoke")

#: The BagCert runs of Figures 2-4, 7 and Table 1 (Figure 8 varies the head and the seed).
GRID_RUNS = "method == 'bagcert' and head == 'heaviside' and seed == 0 and sigma == 0"

#: Derandomized Smoothing runs (Levine & Feizi, 2020; ``bagcert_lib.smoothing``), shown beside them.
SMOOTHING_RUNS = "method in ('ds-block', 'ds-column')"

CONFIG_COLUMNS = ["rf", "margin", "head", "sigma", "seed", "profile", "width", "epochs", "train_size",
                  "method", "ablation_size", "theta"]


def run_dirs(results=None) -> list[Path]:
    """Run directories (those with a config.yaml) under ``results`` (default: results_dir())."""
    root = Path(results) if results else results_dir()
    return sorted(p.parent for p in root.glob("*/config.yaml"))


def _config(run: Path) -> dict:
    cfg = rundir.read_config(run)             # validated: known fields, right types
    cfg.setdefault("method", "bagcert")       # runs written before DS existed
    return {"run": run.name, "path": str(run), **{k: cfg.get(k) for k in CONFIG_COLUMNS}}


def _json(path: Path) -> dict:
    return rundir.read_json(path)


RUN_COLUMNS = ["run", "path", *CONFIG_COLUMNS, "finished", "certified", "epochs_done", "eval_clean_accuracy",
               "eval_certified_accuracy", "parameters", "n_train", "device", "dataset",
               "dataset_sha256", "commit", "wall_s", "seconds_per_epoch", "training_flops", "attack_n",
               "adversarial_accuracy", "attack_clean_accuracy", "attack_certified_accuracy",
               "certified_broken", "certify_wall_s", "attack_wall_s"]


def segment_classes(prov: dict) -> list:
    """The CPU class of each training segment of a run, oldest first (None: not recorded)."""
    from .runtime import cpu_class

    recorded = cpu_class(prov["cpu"]) if prov.get("cpu") else None   # segments that predate it
    return [s.get("cpu_class") or recorded for s in prov.get("segments", [])] or [recorded]


def trained_on(prov: dict) -> str | None:
    """The device a run trained on, as provenance.json names it; for a run resumed on other
    machines, every distinct device and CPU class of its segments in order, e.g. the 48-epoch
    scaling run: ``CPU: AMD EPYC (1 threads, avx512-bf16; 1 threads, avx2-or-older; 2 threads,
    avx512-bf16)``."""
    import re

    seen = []
    for seg, cls in zip(prov.get("segments", []), segment_classes(prov)):
        device = seg.get("device") or prov.get("device") or ""
        m = re.fullmatch(r"(.*) \((.*)\)", device)          # "CPU: AMD EPYC (1 threads)"
        name, how = m.groups() if m else (device, "")
        part = (name, ", ".join(x for x in (how, cls) if x))
        if name and part not in seen:
            seen.append(part)
    if len(seen) < 2:
        return prov.get("device")
    if len({n for n, _ in seen}) == 1:
        return f"{seen[0][0]} ({'; '.join(h for _, h in seen)})"
    return " + ".join(f"{n} ({h})" for n, h in seen)


def _certify_wall_s(run: Path):
    """Wall time of the run's certification step (certification.csv's ``wall_s``, one per run)."""
    f = run / "certification.csv"
    row = rundir.read_csv(f, nrows=1) if f.is_file() else pd.DataFrame()
    return float(row.wall_s.iloc[0]) if "wall_s" in row and len(row) else None


def load_runs(results=None, errors: list | None = None) -> pd.DataFrame:
    """One row per run: config, metrics.json, provenance and attack.json summaries, and the wall
    time of each step (``wall_s`` training, ``certify_wall_s``, ``attack_wall_s``). A run with a
    file that cannot be read raises its error (RunFolderError, naming the file); with ``errors``
    (a list) the run is left out and its error appended there instead."""
    rows = []
    for run in run_dirs(results):
        try:
            rows.append(_run_row(run))
        except (rundir.RunFolderError, OSError) as e:
            if errors is None:
                raise
            errors.append(e)
    return pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)


def _run_row(run: Path) -> dict:
    prov, metrics, attack = (_json(run / f) for f in ("provenance.json", "metrics.json", "attack.json"))
    return {
        **_config(run),
        "finished": metrics.get("finished", False),
        "certified": (run / "certification.csv").is_file(),
        "epochs_done": prov.get("epochs_done"),
        "eval_clean_accuracy": metrics.get("clean_accuracy"),
        "eval_certified_accuracy": metrics.get("certified_accuracy"),
        "parameters": prov.get("parameters"),
        "n_train": prov.get("n_train"),
        "device": trained_on(prov),
        "dataset": prov.get("dataset", {}).get("name"),
        "dataset_sha256": prov.get("dataset", {}).get("sha256"),
        "commit": prov.get("git", {}).get("commit"),
        "wall_s": prov.get("wall_s"),
        "seconds_per_epoch": prov.get("seconds_per_epoch"),
        "training_flops": prov.get("training_flops"),
        "attack_n": attack.get("n"),
        "adversarial_accuracy": attack.get("adversarial_accuracy"),
        "attack_clean_accuracy": attack.get("clean_accuracy"),
        "attack_certified_accuracy": attack.get("certified_accuracy"),
        "certified_broken": attack.get("certified_broken"),
        "certify_wall_s": _certify_wall_s(run),
        "attack_wall_s": attack.get("seconds"),
    }


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that are trained and certified (a run in the middle of its sweep is left out)."""
    return runs[runs["finished"].fillna(False).astype(bool) & runs["certified"].fillna(False).astype(bool)]


def select_runs(runs: pd.DataFrame, profile: str | None = None) -> pd.DataFrame:
    """The finished runs of one profile: ``profile``, or (None) the first of :data:`PROFILE_ORDER`
    that has finished runs. Figures and tables call this so a plot never mixes scales. Finished
    means trained and certified (a run still in the middle of its sweep is left out)."""
    done = finished_runs(runs)
    if profile is None:
        done = done[done["profile"] != "imagenet"]     # ImageNet: its own panel (imagenet_runs)
        have = set(done["profile"])
        profile = next((p for p in PROFILE_ORDER if p in have), None)
    return done[done["profile"] == profile] if profile else done


def grid_runs(results=None, profile: str | None = None) -> pd.DataFrame:
    """The finished :data:`GRID_RUNS` of one profile (see :func:`select_runs`)."""
    return select_runs(load_runs(results), profile).query(GRID_RUNS)


def smoothing_runs(results=None, profile: str | None = None) -> pd.DataFrame:
    """The finished DS runs (:data:`SMOOTHING_RUNS`) of one profile (see :func:`select_runs`), one
    per method (:func:`one_per_method`)."""
    return one_per_method(select_runs(load_runs(results), profile)).query(SMOOTHING_RUNS)


def one_per_method(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` (one profile's) with one run per baseline method, every BagCert run kept: the run
    whose training FLOPs are closest, as a ratio, to the median of the profile's BagCert
    headline runs (``grids.headline``'s RF and M), so that a baseline trained at BagCert's
    compute is the one compared; on a tie, and without BagCert runs, the larger budget."""
    import numpy as np

    from .config import grids

    h = grids()["headline"]
    bag = runs[runs["method"] == "bagcert"]
    other = runs[runs["method"] != "bagcert"]
    if other.empty:
        return runs
    ref = bag[(bag["rf"] == h["rf"]) & (bag["margin"] == h["margin"])]["training_flops"]
    ref = float(pd.to_numeric(ref, errors="coerce").median()) if len(ref) else float("nan")
    flops = pd.to_numeric(other["training_flops"], errors="coerce").astype(float)
    distance = np.abs(np.log(flops / ref)) if np.isfinite(ref) and ref > 0 else -flops
    order = pd.DataFrame({"distance": distance.fillna(np.inf), "larger": -flops.fillna(0)},
                         index=other.index).sort_values(["distance", "larger"], kind="stable")
    chosen = other.loc[order.index].drop_duplicates("method")
    return runs.loc[runs.index.isin(bag.index) | runs.index.isin(chosen.index)]


#: Images of ImageNet's validation set: what the paper's "roughly 7 minutes" certifies (§4).
IMAGENET_VAL = 50_000


def imagenet_runs(results=None) -> pd.DataFrame:
    """One row per finished, certified BagCert ImageNet run (profile ``imagenet`` or an ImageNet
    dataset, RF in ``imagenet_receptive_fields``), with its 32x32 rows of certification.csv side
    by side: ``clean_accuracy``, ``certified_3_2``, ``certified_3_3``, ``n`` (val images
    certified), ``certify_wall_s`` (decoding included) and ``seconds_50k`` (that wall time scaled to
    the 50,000 val images), plus the run's config and ``scale`` (what it was trained and certified
    on). Sorted so that the largest-scale run of each (rf, margin) comes first. Empty (with these
    columns) when there is none: the figures then show the paper's values alone."""
    from .certifier import _pair, patch_label
    from .config import grids

    g = grids()
    patch = patch_label(_pair(g["imagenet_patches"][0], "patch"))      # 32x32: 2 % of 224x224
    cols = ["run", "path", *CONFIG_COLUMNS, "dataset", "n_train", "epochs_done", "device", "patch", "n",
            "clean_accuracy", "certified_3_2", "certified_3_3", "certify_wall_s", "seconds_50k", "scale"]
    runs = load_runs(results)
    if runs.empty:
        return pd.DataFrame(columns=cols)
    done = runs[runs["finished"].fillna(False).astype(bool) & runs["certified"].fillna(False).astype(bool)
                & ((runs["profile"] == "imagenet") | (runs["dataset"] == "imagenet"))
                & runs["rf"].isin(g["imagenet_receptive_fields"]) & (runs["method"] == "bagcert")]
    cert = load_certification(results).query("patch == @patch and run in @done.run")
    if done.empty or cert.empty:
        return pd.DataFrame(columns=cols)
    wide = cert.pivot_table(index="run", columns="condition", values="certified_accuracy")
    first = cert.groupby("run").first()
    out = done.drop(columns=["device"]).set_index("run").join(
        first[["patch", "n", "clean_accuracy", "device"]], how="inner")
    out["certified_3_2"], out["certified_3_3"] = wide.get("3.2"), wide.get("3.3")
    out["seconds_50k"] = out["certify_wall_s"] / out["n"] * IMAGENET_VAL
    out["scale"] = [f"{int(t or 0):,} training images, {int(e or 0)} epoch{'' if e == 1 else 's'}, "
                    f"certified on {int(n):,} val images" for t, e, n in zip(out["n_train"], out["epochs_done"], out["n"])]
    out = out.reset_index().sort_values(["rf", "margin", "n", "n_train", "epochs_done", "run"],
                                        ascending=[True, True, False, False, False, True])
    return out[cols].reset_index(drop=True)


def imagenet_claims(inet: pd.DataFrame) -> dict:
    """Our values of claims.csv's ImageNet rows from :func:`imagenet_runs`' frame ``inet``: §4's
    configuration (the ``imagenet`` profile's RF 17, M 0.25) from its largest-scale run, and the
    certification seconds for 50,000 val images from that run (else any ImageNet run). Each value
    is None when there is no such run; ``run`` / ``timed_run`` are the rows used (or None)."""
    from .config import profile_config

    ih = profile_config("imagenet")
    main = inet[(inet["rf"] == ih.rf) & (inet["margin"] == ih.margin)].head(1)
    timed = main if len(main) else inet.head(1)
    row = main.iloc[0] if len(main) else None
    trow = timed.iloc[0] if len(timed) else None
    return {"imagenet_cond32": None if row is None else float(row.certified_3_2),
            "imagenet_cond33": None if row is None else float(row.certified_3_3),
            "imagenet_seconds": None if trow is None else float(trow.seconds_50k),
            "run": row, "timed_run": trow}


def headline_query() -> str:
    """A pandas query selecting the headline configuration's runs (RF 7, M 0.5 in _config.yml)."""
    from .config import grids

    h = grids()["headline"]
    return f"rf == {h['rf']} and margin == {h['margin']} and {GRID_RUNS}"


def headline_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The finished, certified runs of the headline configuration (:func:`headline_query`) among
    ``runs``, every profile's but ``smoke``'s (which only exercises the pipeline) when another
    profile has one: the headline page's runs."""
    if runs.empty:
        return runs
    done = finished_runs(runs)
    done = done.query(headline_query())
    return done.query("profile != 'smoke'") if (done["profile"] != "smoke").any() else done


def figure8_query() -> str:
    """A pandas query selecting Figure 8's runs (App. A.3: every head and seed of RF 7, M 0.5 in
    _config.yml); add ``and head == 'heaviside'`` for the Heaviside seeds alone."""
    from .config import grids

    f = grids()["figure8"]
    return f"method == 'bagcert' and rf == {f['rf']} and margin == {f['margin']} and sigma == 0"


def headline_run(results=None, profile: str | None = None, run_dir=None, needs: str = "metrics.json") -> Path:
    """``run_dir`` if given (as a path, or a name under the results folder); else the headline
    configuration's run among :func:`select_runs`. It must hold ``needs``; the error says what is
    missing."""
    root = Path(results) if results else results_dir()
    if run_dir is not None:
        return rundir.resolve(run_dir, needs, root)
    every = load_runs(root)
    # auto: the largest-scale profile whose headline run already has `needs` (a run still in the
    # middle of its sweep falls back to the next profile, and the figure names the scale it shows)
    for p in [profile] if profile else [p for p in PROFILE_ORDER if p in set(every["profile"])]:
        for path in select_runs(every, p).query(headline_query())["path"]:
            if (Path(path) / needs).is_file():
                return Path(path)
    raise FileNotFoundError(f"no finished headline run ({headline_query()}) with {needs} "
                            f"under {root} for profile {profile or 'auto'}; run notebooks/train.ipynb "
                            "and notebooks/attack.ipynb for it first")


def repository(root=None) -> tuple[str, str]:
    """The repository's URL and branch, from ``book/_config.yml`` (``repository.url``,
    ``repository.branch``): the one place a fork changes them."""
    from .config import REPO_ROOT

    repo = yaml.safe_load((Path(root or REPO_ROOT) / "book" / "_config.yml").read_text())["repository"]
    return repo["url"].rstrip("/"), repo.get("branch", "main")


def run_links(runs: pd.DataFrame, notebook: str):
    """HTML naming the notebook and linking every run directory a figure was made from, to the
    repository's view of the folder (:func:`repository`; the published site cannot list a
    folder). Runs outside the repository are named by path."""
    from html import escape

    from IPython.display import HTML

    from .config import REPO_ROOT

    url, branch = repository()
    items = []
    for run, path in zip(runs["run"], runs["path"]):
        p = Path(path).resolve()
        try:
            href = f"{url}/tree/{branch}/" + p.relative_to(REPO_ROOT.resolve()).as_posix()
            items.append(f'<a href="{escape(href)}"><code>{escape(run)}</code></a>')
        except ValueError:
            items.append(f"<code>{escape(str(p))}</code>")
    body = ", ".join(items) or "none yet"
    return HTML(f"<p>Made by <code>notebooks/{escape(notebook)}</code> from {len(items)} run "
                f"director{'y' if len(items) == 1 else 'ies'}: {body}.</p>")


#: Columns of each run's CSV files, so a figure over an empty results folder gets empty frames
#: with the right columns instead of failing.
CSV_COLUMNS = {
    "certification.csv": ["patch", "patch_h", "patch_w", "condition", "n", "clean_accuracy",
                          "certified_accuracy", "forward_s", "certify_s", "wall_s", "device"],
    "history.csv": ["epoch", "loss", "lr", "clean_accuracy", "certified_accuracy",
                    "certified_global_accuracy", "train_s", "epoch_s", "images_per_s"],
}


def _per_run_csv(results, filename, errors: list | None = None) -> pd.DataFrame:
    frames = []
    for run in run_dirs(results):
        if (run / filename).is_file():
            try:
                df = rundir.read_csv(run / filename, dtype={"condition": str, "patch": str})
                for k, v in reversed(list(_config(run).items())):
                    df.insert(0, k, v)
            except (rundir.RunFolderError, OSError) as e:
                if errors is None:
                    raise
                errors.append(e)
                continue
            frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["run", "path", *CONFIG_COLUMNS, *CSV_COLUMNS[filename]])


def load_certification(results=None, errors: list | None = None) -> pd.DataFrame:
    """One row per (run, patch, condition): clean and certified accuracy on the test split
    (``errors``: as in :func:`load_runs`)."""
    return _per_run_csv(results, "certification.csv", errors)


def load_history(results=None) -> pd.DataFrame:
    """One row per (run, epoch): loss, lr, held-out clean / certified accuracy, seconds."""
    return _per_run_csv(results, "history.csv")


def load_retrained(results=None) -> pd.DataFrame:
    """One row per (run, patch, condition) of the runs trained again to ship their weights
    (``previous.json``, written by ``sweep.replace_with_retrain``): the replaced run's and the new
    run's test-set clean and certified accuracy (``*_before``, ``*_after``), and the commit and
    torch of each."""
    cols = ["run", "profile", "patch", "condition", "clean_accuracy_before", "clean_accuracy_after",
            "certified_accuracy_before", "certified_accuracy_after", "commit_before",
            "commit_after", "torch_before", "torch_after"]
    rows = []
    for run in run_dirs(results):
        old, cert = _json(run / "previous.json"), run / "certification.csv"
        if not old or not cert.is_file():      # not retrained, or not certified again yet
            continue
        prov = _json(run / "provenance.json")
        before = pd.DataFrame(old.get("certification", []), columns=["patch", "condition", "clean_accuracy",
                                                                     "certified_accuracy"])
        after = rundir.read_csv(cert, dtype={"condition": str, "patch": str})
        both = before.astype({"condition": str, "patch": str}).merge(
            after[["patch", "condition", "clean_accuracy", "certified_accuracy"]],
            on=["patch", "condition"], suffixes=("_before", "_after"))
        for c in ("clean_accuracy_before", "certified_accuracy_before"):
            both[c] = both[c].astype(float)
        both.insert(0, "profile", _config(run)["profile"])
        both.insert(0, "run", run.name)
        both["commit_before"], both["commit_after"] = old.get("commit"), prov.get("git", {}).get("commit")
        both["torch_before"], both["torch_after"] = old.get("torch"), prov.get("torch")
        rows.append(both[cols])
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=cols)


def scale_label(runs: pd.DataFrame) -> str:
    """'profile cpu: width 32, 6 epochs, 50,000 training images' for the runs shown; another
    defense is named with its architecture (CBN and Mask-BN: the region scorer; DS and
    PatchCleanser: a ResNet-18, whose width is not the scorer's)."""
    parts = []
    runs = runs.assign(method=runs.get("method", pd.Series("bagcert", index=runs.index)).fillna("bagcert"))
    for (method, profile, width, epochs, n), _ in runs.groupby(["method", "profile", "width", "epochs", "n_train"]):
        what = ("" if method == "bagcert" else f"{method} region scorer " if method in ("cbn", "mask-bn")
                else f"{method} ResNet-18 ")
        parts.append(f"profile {profile}: {what}width {width}, {epochs} epochs, {int(n):,} training images")
    return "; ".join(parts) or "no runs"


#: The shipped model the book's "certify your own images" page uses: the headline configuration
#: (RF and margin of _config.yml's ``headline``) with the Heaviside head and σ = 0, any seed.
def shipped_query() -> str:
    from .config import grids

    h = grids()["headline"]
    return (f"method == 'bagcert' and rf == {h['rf']} and margin == {h['margin']} "
            "and head == 'heaviside' and sigma == 0")


def shipped_headline(results=None) -> Path:
    """The run directory of the best shipped headline-configuration model (:func:`shipped_query`)
    holding ``model.safetensors``: finished runs first, then the most training compute
    (``provenance.json["training_flops"]`` where every candidate records it, else width × epochs).
    Raises FileNotFoundError naming the folder it looked in when there is none."""
    from .rundir import WEIGHTS

    root = Path(results) if results else results_dir()
    runs = load_runs(root)
    cand = runs.query(shipped_query()) if len(runs) else runs
    cand = cand[[(Path(p) / WEIGHTS).is_file() for p in cand["path"]]]
    if cand.empty:
        raise FileNotFoundError(
            f"no shipped headline model ({shipped_query()}, with {WEIGHTS}) under {root}: train one "
            f"(python -m bagcert_lib train --rf 7 --margin 0.5) or export one "
            f"(python -m bagcert_lib export RUN_DIR)")
    flops = [_json(Path(p) / "provenance.json").get("training_flops") for p in cand["path"]]
    all_flops = all(f is not None for f in flops)
    key = [(bool(fin), float(f) if all_flops else 0.0, int(w or 0) * int(e or 0), run)
           for fin, f, w, e, run in zip(cand["finished"].fillna(False), flops, cand["width"],
                                        cand["epochs"], cand["run"])]
    best = max(range(len(key)), key=key.__getitem__)
    return Path(cand["path"].iloc[best])
