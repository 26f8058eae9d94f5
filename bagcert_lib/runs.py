"""One run directory, three steps: train (``train.train``), certify and attack (this module).

Files each step adds to ``run_dir`` (through :mod:`.rundir`: atomically, under its lock):

* ``certification.csv`` — per patch shape and condition: clean and certified accuracy on the
  run's test images (``n`` of the split's ``test_split``), forward-pass vs certification
  seconds (one forward pass for all shapes); ``certification.parts/`` while it runs (its
  finished chunks of test images, so that a killed certification resumes and other processes
  can share it: ``certify --join``).
* ``attack.json`` / ``attack_samples.csv`` — App. A.2 PGD results (Figure 7), per sample too;
  ``attack_example.npz`` — one illustrated example (Figure 6).
* ``attack_ds.json`` / ``attack_mask_ds.json`` / ``attack_patchcleanser.json`` — the PGD attack
  on a defense certified by its own analysis (DS on a DS block or column run, Mask-DS on a DS
  column run, PatchCleanser): no certified image broken.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import data as data_mod
from . import mask_ds, rundir, smoothing
from . import patchcleanser as pc
from .attack import patch_attack
from .certifier import _pair, affected_range
from .config import REPO_ROOT, grids, profile_config, parse_test_size  # noqa: F401 (REPO_ROOT: API)
from .pretrained import load_run
from .rundir import MODEL_FILES, results_dir  # noqa: F401 (API)
from .runtime import compiled, default_device, device_name, memory_format, precision, region_scores
from .methods import method_for
from .train import evaluate_batches, git_commit, test_batches


def figure_patches(dataset: str = "cifar10") -> list:
    """Every patch shape of Figures 3 and 4 as (h, w) pairs: squares 1..16 and the 24-pixel aspect
    ratios (labelled width x height by ``certifier.patch_label``); for ImageNet the 32x32 patch of
    Figure 2 (2.04 % of 224x224, App. A.1.2)."""
    g = grids()
    if dataset == "imagenet":
        return [_pair(p, "patch") for p in g["imagenet_patches"]]
    return [_pair(p, "patch") for p in g["square_patches"] + g["aspect_ratio_patches"]]


def headline_run_dir(profile: str = "auto") -> Path:
    """The run directory of the headline configuration (RF 7, M 0.5) of ``profile``."""
    h = grids()["headline"]
    return results_dir() / profile_config(profile, rf=h["rf"], margin=h["margin"]).run_name()


def resolve_run_dir(run_dir=None, needs=MODEL_FILES, results=None) -> Path:
    """A run directory holding one of ``needs``: as given, else relative to the repository root or
    the results folder (so notebooks behave the same whatever directory papermill is started
    from); None: the headline run of the active profile, else the best shipped headline model."""
    root = Path(results) if results else results_dir()
    needs = (needs,) if isinstance(needs, str) else tuple(needs)
    if run_dir is None:
        run_dir = headline_run_dir()
        if set(needs) & set(MODEL_FILES) and not any((run_dir / n).is_file() for n in needs):
            from .results import shipped_headline     # a fresh clone: the best shipped model
            try:
                return shipped_headline(root)
            except FileNotFoundError:
                pass
    return rundir.resolve(run_dir, needs, root)


def _load(run_dir, device, progress, n=None, test_size=None):
    """Model, config and the test images: the first ``n`` of a fixed class-balanced subset,
    capped by ``test_size`` (None: the run's config.yaml ``test_size``; ``"all"``: no cap); the
    whole test split when nothing caps it. Also returns the split's size."""
    device = torch.device(device) if device else default_device()
    model, cfg = load_run(run_dir, device)
    model = model.to(memory_format=memory_format(device, cfg.channels_last, model))
    ds = data_mod.load_dataset(cfg.dataset, cfg.data, progress=progress)
    split = len(ds.y_test)
    cap = cfg.test_size if test_size is None else parse_test_size(test_size)
    n = min(x for x in (n, cap, split) if x)
    if n < split:
        ds = data_mod.subset(ds, n_test=n, seed=0)
    return model, cfg, ds, device, split


#: Test images per saved chunk of a certification (a multiple of the in-memory batch of 500 and
#: the streamed one of 100, so chunked and whole certifications see the same batches).
CHUNK = 500


def certify_run(run_dir, patches=None, device=None, progress=True,
                filename="certification.csv", test_size=None, compile=None,
                chunk: int | None = None) -> pd.DataFrame:
    """Certify a run's model on its test images for ``patches`` (default: every figure's shapes)
    from one forward pass per batch: the run's config.yaml ``test_size`` of them (a fixed
    class-balanced subset; None: the whole split), or ``test_size`` (a number, or ``"all"``) when
    given. ``compile``: run the model through ``torch.compile`` (None: as the run was trained):
    faster for the defenses of many forward passes per image, but a numerically different model
    (fused kernels round differently), so a few images near a decision may certify differently;
    the certificate holds for the model that made it (``benchmarks/certify_cost.py --compile``).
    Each row records ``n``, the split's size ``test_split``, ``compiled``, the ``device`` and the
    ``precision`` (bf16 or fp32, :func:`bagcert_lib.runtime.precision`). Writes ``filename`` into
    the run directory, where the rows of these shapes replace their old ones and the other shapes'
    rows stay (certifying one shape never erases the figures' others). Returns the new rows.

    More than ``chunk`` images (default :data:`CHUNK`) are certified ``chunk`` at a time, each
    chunk saved as it finishes (:class:`bagcert_lib.rundir.Parts`): a killed certification
    started again with the same weights, config, dataset (its sha256), shapes and images resumes
    at the first missing chunk (in the saved chunks' precision: refused, before any work, where
    this machine's differs), and the chunks' counts add up to the rows one pass would give
    (:func:`combine_chunks`). Other processes may certify chunks beside it
    (:func:`join_certification`): it skips the chunks they hold, waits for them at the end, and
    certifies any whose holder died unsaved.
    ImageNet's val set is streamed through the DataLoader (centre crop), never held in memory;
    ``wall_s`` includes its decoding. Holds the run folder's lock; the file is written
    atomically, and an existing one that cannot be read is refused (naming it) before any work.
    A patch larger than the image is refused."""
    from tqdm import tqdm

    run_dir = resolve_run_dir(run_dir)
    size = CHUNK if chunk is None else int(chunk)
    if size < 1:
        raise ValueError(f"chunk must be a positive number of images, got {chunk!r}")
    with rundir.lock(run_dir, "certification"):
        path = run_dir / filename
        _old_rows(path)                        # an unreadable file is refused before any work
        model, cfg, ds, device, split = _load(run_dir, device, progress, test_size=test_size)
        patches = [_pair(p, "patch") for p in (patches or figure_patches(cfg.dataset))]
        check_patches(patches, data_mod.image_size(ds))
        compile = cfg.compile if compile is None else bool(compile)
        n = len(ds.y_test)
        ranges = _ranges(n, size)
        parts = rundir.Parts(run_dir, filename, _plan(model, cfg, ds, patches, split, compile, size))
        if parts.discarded and progress:
            print(f"{parts.folder}: {parts.discarded} saved chunks belong to another certification "
                  "(weights, config, data, shapes, images or chunk size differ); starting again")
        if len(ranges) > 1:                        # one chunk: nothing to resume or share
            _same_precision(parts, ranges, precision(device, cfg.amp), device)
            parts.start()
        net = compiled(model, compile)
        rows, later = {}, []
        bar = tqdm(ranges, desc=f"certify {n} images", unit="chunk",
                   disable=not progress or len(ranges) == 1)
        for start, stop in bar:
            if len(ranges) == 1:
                rows[start] = _certify_chunk(net, model, cfg, ds, device, patches, start, stop, progress)
                continue
            with parts.claim(start, stop) as mine:
                if parts.done(start, stop):
                    rows[start] = parts.rows(start, stop)
                elif not mine:                     # a process that joined is certifying it
                    later.append((start, stop))
                else:
                    rows[start] = _certify_chunk(net, model, cfg, ds, device, patches, start, stop,
                                                 progress, parts)
        for start, stop in later:                  # wait for each; certify it if its holder died
            if progress and not parts.done(start, stop):
                print(f"waiting for test images {start}-{stop}, which another process is certifying")
            with parts.claim(start, stop, wait=True):
                rows[start] = (parts.rows(start, stop) if parts.done(start, stop) else
                               _certify_chunk(net, model, cfg, ds, device, patches, start, stop,
                                              progress, parts))
        df = combine_chunks([rows[a] for a in sorted(rows)])
        df["test_split"] = split
        df["compiled"] = compile
        rundir.write_csv(path, _merge_rows(path, df))
        parts.remove()
    return df


def _same_precision(parts, ranges, mine: str, device) -> None:
    """RunFolderError, before any work, when saved chunks were certified in another precision
    (bf16 or fp32, a ``precision`` column) than this process would use: a certification is one
    model's arithmetic. With ``amp`` unset in the config the precision follows the machine (bf16
    on GPUs and on CPUs with AVX512-BF16 or AMX, fp32 elsewhere), so a certification moved to
    another kind of CPU would otherwise combine the two. Chunks saved before rows recorded their
    precision are not checked."""
    saved = [parts.rows(a, b) for a, b in ranges if parts.done(a, b)]
    theirs = Counter(p for rows in saved if "precision" in rows
                     for p in rows["precision"].dropna().unique())
    other = {p: k for p, k in theirs.items() if p != mine}
    if other:
        said = ", ".join(f"{k} chunk{'s' * (k > 1)} in {p}" for p, k in other.items())
        raise rundir.RunFolderError(
            f"{parts.folder}: saved chunks were certified in another precision ({said}); this "
            f"process would certify in {mine} on {device_name(device)}, and one certification "
            f"keeps one arithmetic. Resume it where {'/'.join(other)} is the default "
            "(bf16: a GPU, or a CPU with AVX512-BF16 or AMX; fp32: a CPU without them), or "
            f"delete {parts.folder} to certify every chunk again in {mine}")


def _ranges(n: int, size: int) -> list[tuple[int, int]]:
    """The chunks (start, stop) of ``n`` test images, ``size`` at a time."""
    return [(a, min(a + size, n)) for a in range(0, n, size)]


def _plan(model, cfg, ds, patches, split, compile, chunk) -> dict:
    """What a chunked certification certifies (:class:`bagcert_lib.rundir.Parts`' plan.json)."""
    return {"model": fingerprint(model), "config": rundir.certifying_config(cfg), "data": ds.sha256,
            "patches": [list(p) for p in patches], "n": len(ds.y_test), "test_split": split,
            "compiled": bool(compile), "chunk": int(chunk)}


def _certify_chunk(net, model, cfg, ds, device, patches, start, stop, progress, parts=None):
    """The rows of test images ``start`` … ``stop`` − 1 (saved in ``parts`` when given)."""
    t0 = time.perf_counter()
    part = data_mod.test_range(ds, start, stop)
    df = evaluate_batches(net, test_batches(part, cfg, device, model=model), cfg, device,
                          patches=patches, progress=progress)
    df["wall_s"] = time.perf_counter() - t0
    df["device"] = device_name(device)
    df["precision"] = precision(device, cfg.amp)
    if parts is not None:
        parts.save(start, stop, df)
    return df


def join_certification(run_dir, device=None, progress=True, filename="certification.csv",
                       wait: float = 0.0, poll: float = 10.0) -> list[tuple[int, int]]:
    """Certify, beside the process certifying ``run_dir`` (:func:`certify_run`), the chunks of
    its certification that nobody has saved or holds: its shapes, images and chunk size are those
    of the folder's plan.json, and the model, config and dataset this process loads must be the
    plan's (RunFolderError naming what differs). Any number of processes, on one machine or on
    several sharing the folder, may join; each chunk is certified once. Returns the chunks this
    process saved. The certification's owner combines them into ``filename``; if it was killed,
    ``certify`` started again with the same options does, certifying only what is missing.

    ``wait``: seconds to wait (polling every ``poll``) for a certification to start, e.g. in a
    job array whose first task starts it; RunFolderError when none is under way by then. Stops
    early, saving nothing more, if another certification replaces the one it joined."""
    from tqdm import tqdm

    run_dir = resolve_run_dir(run_dir)
    deadline = time.monotonic() + float(wait)
    while (parts := rundir.Parts.join(run_dir, filename)) is None:
        if time.monotonic() >= deadline:
            raise rundir.RunFolderError(
                f"{run_dir}: no certification is under way to join (no "
                f"{rundir.parts_folder(run_dir, filename).name}/{rundir.PLAN}); start one with "
                "`python -m bagcert_lib certify` (or the sweep), then join it"
                + (f"; waited {wait:g} s" if wait else ""))
        time.sleep(max(0.0, min(float(poll), deadline - time.monotonic())))
    plan = parts.plan
    patches = [tuple(p) for p in plan["patches"]]
    model, cfg, ds, device, split = _load(run_dir, device, progress, test_size=plan["n"])
    mine = json.loads(json.dumps(_plan(model, cfg, ds, patches,
                                       split, plan["compiled"], plan["chunk"]), default=str))
    differ = [k for k in dict.fromkeys([*plan, *mine]) if plan.get(k) != mine.get(k)]
    if differ:
        raise rundir.RunFolderError(
            f"{parts.folder}: the certification under way differs from what this process loads in "
            f"{', '.join(differ)} (weights, config or data changed since it started?); not joined")
    net = compiled(model, plan["compiled"])
    n, size = plan["n"], plan["chunk"]
    ranges = _ranges(n, size)
    _same_precision(parts, ranges, precision(device, cfg.amp), device)
    saved = []
    for start, stop in tqdm(ranges, desc=f"join: certify {n} images", unit="chunk", disable=not progress):
        if not parts.current():
            if progress:
                print(f"{parts.folder}: another certification replaced the one joined; stopping")
            break
        try:
            with parts.claim(start, stop) as got:
                if got and not parts.done(start, stop):
                    _certify_chunk(net, model, cfg, ds, device, patches=patches,
                                   start=start, stop=stop, progress=progress, parts=parts)
                    saved.append((start, stop))
        except FileNotFoundError:                  # the folder was removed: merged or replaced
            break
    return saved


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (names, dtypes, shapes, bytes): what a saved
    chunk of a certification was certified with."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def combine_chunks(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """One row per (patch, condition) from the rows of consecutive chunks of test images: ``n``,
    ``passes`` and the seconds (``*_s``) add up; an accuracy is its counts' sum over the total
    ``n`` (count = accuracy × n, an integer); ``device`` lists each machine once; every other
    column must agree between chunks (ValueError naming it), ``precision`` where recorded. The
    ``attrs`` combine the same way (``n`` and ``*_s`` add up, the others are the first chunk's)."""
    if len(parts) == 1:
        return parts[0].reset_index(drop=True)
    df = pd.concat(parts, ignore_index=True)
    key = ["patch", "condition"]
    groups = df.groupby(key, sort=False)
    out = groups.first()
    n = groups["n"].sum()
    for c in df.columns.difference(key):
        if c in ("n", "passes") or c.endswith("_s"):
            out[c] = groups[c].sum()
        elif c.endswith("_accuracy"):
            counts = (df[c] * df["n"]).round()
            out[c] = counts.groupby([df[k] for k in key], sort=False).sum(min_count=1) / n
        elif c == "device":
            out[c] = groups[c].agg(lambda s: "; ".join(dict.fromkeys(s.astype(str))))
        elif (groups[c].nunique(dropna=c == "precision") > 1).any():   # precision: unknown in old chunks
            raise ValueError(f"the chunks disagree on {c!r}: {sorted(df[c].astype(str).unique())}")
    out = out.reset_index()[list(df.columns)]
    for key, value in parts[0].attrs.items():       # seconds and n add up, the rest is shared
        add = key == "n" or key.endswith("_s")
        out.attrs[key] = sum(p.attrs.get(key, 0) for p in parts) if add else value
    return out


def check_patches(patches, image_size) -> None:
    """ValueError for a patch (h, w) larger than the image (H, W), in the paper's w × h."""
    H, W = image_size
    for h, w in patches:
        if h > H or w > W:
            raise ValueError(f"patch {w}x{h} (w × h) is larger than the image {W}x{H}; "
                             f"allowed: up to {W} wide and {H} high")


def _old_rows(path: Path) -> pd.DataFrame | None:
    """The rows of an existing certification file (None: there is none); RunFolderError naming
    it when it is not a table with patch and condition columns."""
    if not path.is_file():
        return None
    old = rundir.read_csv(path, dtype={"condition": str})
    if not {"patch", "condition"} <= set(old.columns):
        raise rundir.RunFolderError(f"{path}: has no patch and condition columns; delete it "
                                    "to certify again from scratch")
    return old


def _merge_rows(path: Path, new: pd.DataFrame) -> pd.DataFrame:
    """``path``'s rows with those of ``new``'s (patch, condition) pairs replaced in place, and
    ``new``'s other rows appended. A file that is not such a table raises RunFolderError."""
    old = _old_rows(path)
    if old is None:
        return new
    key = ["patch", "condition"]
    columns = list(dict.fromkeys([*old.columns, *new.columns]))
    old, new = old.set_index(key), new.astype({"condition": str}).set_index(key)
    order = list(old.index) + [k for k in new.index if k not in old.index]
    return pd.concat([old.drop(new.index, errors="ignore"), new]).loc[order].reset_index()[columns]


def attack_run(run_dir, n: int | None = 1000, patch=5, steps: int = 100, step_size: float = 0.025,
               batch_size: int = 250, device=None, seed: int = 0, progress: bool = True) -> dict:
    """App. A.2 attack on ``n`` test images (class-balanced, fixed; None = all) of a run.

    Writes attack.json (accuracies, and ``certified_broken``, which must be 0), attack_samples.csv
    and attack_example.npz (the first broken sample, else the first one) for Figure 6.
    """
    patch = _pair(patch, "patch")
    run_dir = resolve_run_dir(run_dir)
    with rundir.lock(run_dir, "attack"):
        return _attack(run_dir, n, patch, steps, step_size, batch_size, device, seed, progress)


def _attack(run_dir, n, patch, steps, step_size, batch_size, device, seed, progress) -> dict:
    from tqdm import tqdm

    model, cfg, ds, device, _ = _load(run_dir, device, progress, n)
    check_patches([patch], data_mod.image_size(ds))
    gen = torch.Generator().manual_seed(seed)
    git = git_commit()
    attack = getattr(method_for(cfg), "attack", patch_attack)    # a defense's own, else App. A.2's
    rows, t0, example = [], time.perf_counter(), None
    loader = test_batches(ds, cfg, device, batch_size, model=model)   # ImageNet: streamed, centre crop
    for x, y in tqdm(loader, total=data_mod.num_batches(len(ds.y_test), batch_size, False),
                     desc="attack", disable=not progress):
        res = attack(model, x, y, patch, steps=steps, step_size=step_size, head=cfg.head,
                     amp=cfg.amp, generator=gen)
        cert = res.certificate
        rows.append(pd.DataFrame({
            "label": y.cpu(), "clean_correct": res.clean_correct.cpu(),
            "certified": cert.certified.cpu(), "certified_global": cert.certified_global.cpu(),
            "adv_correct": res.adv_correct.cpu(), "flipped": res.flipped.cpu(),
            "row": res.row.cpu(), "col": res.col.cpu(), "target": res.target.cpu()}))
        if example is None or (not example["flipped"] and res.flipped.any()):
            i = int(res.flipped.nonzero()[0]) if res.flipped.any() else 0
            example = _example(model, cfg, x[i], res.images[i], int(y[i]), res, i, patch)
    seconds = time.perf_counter() - t0
    df = pd.concat(rows, ignore_index=True)
    out = {"n": len(df), "patch": list(patch), "steps": steps, "step_size": step_size,
           "clean_accuracy": df.clean_correct.mean(), "adversarial_accuracy": df.adv_correct.mean(),
           "certified_accuracy": df.certified.mean(),
           "certified_global_accuracy": df.certified_global.mean(),
           "certified_broken": int((df.certified & df.flipped).sum()),
           "seconds": seconds, "device": device_name(device), "git": git,
           "dataset": ds.describe()}
    rundir.write_csv(run_dir / rundir.ATTACK_SAMPLES, df, index=True, index_label="index")
    rundir.write_npz(run_dir / rundir.ATTACK_EXAMPLE, **example)
    rundir.write(run_dir / rundir.ATTACK, json.dumps(out, indent=2, default=float))   # last: done
    return out


class UnsoundCertificate(RuntimeError):
    """A patch attack changed the prediction on an image that its defense certified."""


def save_attack_record(run_dir, name: str, record: dict) -> None:
    """Write a defense's own attack record (``attack_<defense>.json``) into its run folder,
    print it, and raise :class:`UnsoundCertificate` when it broke a certified image."""
    text = json.dumps(record, indent=2, default=float)
    rundir.write(Path(run_dir) / name, text + "\n")
    print(text)
    refuse_broken(run_dir, record, f"the attack in {name}")


def refuse_broken(run_dir, record: dict, attack: str) -> None:
    """Raise :class:`UnsoundCertificate` when ``attack``'s ``record`` broke a certified image."""
    if record["certified_broken"]:
        raise UnsoundCertificate(f"{run_dir}: {record['certified_broken']} certified images broken "
                                 f"by {attack}: the certificate is unsound")


def _defense_attack(run_dir, name: str, attack, n, patch, batch_size, device, seed, progress,
                    params: dict) -> dict:
    """The loop of the attack ``name`` on a defense's own certificate (:data:`DEFENSE_ATTACKS`;
    the run's method must be one it attacks, :data:`.rundir.ATTACKS_OF`): the first ``n`` test images
    of the run's fixed class-balanced subset, ``batch_size`` at a time, each batch given to
    ``attack(model, cfg, x, y, patch, generator)`` → (clean correct, certified, correct after the
    attack, record fields), per image. Writes ``attack_<defense>.json``
    (:data:`.rundir.DEFENSE_ATTACK`) under the run's lock: ``params``, the accuracies, the images
    broken (correct, then not) and the certified ones among them, which must be none
    (:func:`save_attack_record`)."""
    from tqdm import tqdm

    patch, run_dir = _pair(patch, "patch"), resolve_run_dir(run_dir)
    with rundir.lock(run_dir, "attack"):
        model, cfg, ds, device, _ = _load(run_dir, device, progress, n)
        if name not in rundir.ATTACKS_OF.get(cfg.method, ()):
            wanted = " or ".join(m for m, a in rundir.ATTACKS_OF.items() if name in a)
            raise ValueError(f"{run_dir}: this attack needs a {wanted} run, this is {cfg.method}")
        gen, t0, git = torch.Generator().manual_seed(seed), time.perf_counter(), git_commit()
        sums, fields = dict.fromkeys(("n", "correct", "certified", "adv_correct", "certified_broken"), 0), {}
        loader = test_batches(ds, cfg, device, batch_size=batch_size, model=model)   # images in [0, 1]
        for x, y in tqdm(loader, total=data_mod.num_batches(len(ds.y_test), batch_size, False),
                         desc=f"attack {name}", disable=not progress):
            correct, certified, adv_correct, fields = attack(model, cfg, x, y, patch, gen)
            for key, v in (("n", torch.ones_like(correct)), ("correct", correct),
                           ("certified", certified), ("adv_correct", adv_correct),
                           ("certified_broken", certified & correct & ~adv_correct)):
                sums[key] += int(v.sum())
        m = sums["n"]
        out = {"n": m, "patch": list(patch), **fields, **params,
               "clean_accuracy": sums["correct"] / m, "certified_accuracy": sums["certified"] / m,
               "adversarial_accuracy": sums["adv_correct"] / m,
               "broken": sums["correct"] - sums["adv_correct"], "certified_broken": sums["certified_broken"],
               "seconds": time.perf_counter() - t0, "device": device_name(device), "git": git}
        save_attack_record(run_dir, rundir.DEFENSE_ATTACK[name], out)
    return out


def attack_mask_ds(run_dir, n: int | None = 1000, patch=5, steps: int = 50, step_size: float = 0.05,
                   batch_size: int = 25, device=None, seed: int = 0, progress: bool = True) -> dict:
    """PGD on Mask-DS, a DS column run's second certificate (:func:`.mask_ds.attack`: the patch
    pixels at the weakest window's position, raising that window's class over the true one, the
    robust-masking prediction checked at every iterate), on the first ``n`` test images of the
    run's fixed class-balanced subset. Writes ``attack_mask_ds.json``; a broken certified image
    raises :class:`UnsoundCertificate`."""
    def attack(model, cfg, x, y, patch, gen):
        res = mask_ds.attack(model, x, y, patch, size=cfg.ablation_size, steps=steps,
                             step_size=step_size, amp=cfg.amp, generator=gen)
        return res.clean_correct, res.certificate.certified, res.adv_correct, {}

    return _defense_attack(run_dir, "mask-ds", attack, n, patch, batch_size, device, seed, progress,
                           {"condition": mask_ds.CONDITION, "steps": steps, "step_size": step_size})


def attack_ds(run_dir, n: int | None = 1000, patch=5, steps: int = 50, step_size: float = 0.05,
              batch_size: int | None = None, device=None, seed: int = 0, progress: bool = True) -> dict:
    """PGD on Derandomized Smoothing's own certificate, a DS block or column run
    (:func:`.smoothing.attack`: the patch where the ablations it meets vote most for the label
    over the runner-up, its pixels raising the runner-up's log-probability over the label's on
    those ablations, the smoothed prediction checked at every iterate and on all ablations at the
    end), on the first ``n`` test images of the run's fixed class-balanced subset, ``batch_size``
    at a time (default: about 200 ablated images a pass). Writes ``attack_ds.json`` with Δ, the
    ablations the patch met and the largest change of any class's votes, which must not exceed
    Δ; a broken certified image raises :class:`UnsoundCertificate`."""
    worst = {"vote_change": 0, "ablations_met": 0}

    def attack(model, cfg, x, y, patch, gen):
        res = smoothing.attack(model, x, y, patch, kind=cfg.smoothing, size=cfg.ablation_size,
                               theta=cfg.theta, steps=steps, step_size=step_size, amp=cfg.amp,
                               generator=gen)
        worst["vote_change"] = max(worst["vote_change"], int(res.vote_change.max()))
        worst["ablations_met"] = max(worst["ablations_met"], res.met)
        if worst["vote_change"] > res.delta or worst["ablations_met"] > res.delta:
            raise UnsoundCertificate(f"{run_dir}: a patch met {worst['ablations_met']} ablations "
                                     f"and changed a class's votes by {worst['vote_change']}, more "
                                     f"than the certificate's delta {res.delta}")
        return (res.clean_correct, res.certificate.certified, res.adv_correct,
                {"kind": cfg.smoothing, "delta": res.delta, **worst})

    cfg = rundir.load_config(resolve_run_dir(run_dir))
    if batch_size is None and cfg.smoothing:    # Δ on an image no band wraps: the most it can be
        (h, w), s = _pair(patch, "patch"), cfg.ablation_size
        batch_size = max(1, 200 // smoothing.affected_ablations(cfg.smoothing, s, (h, w), (h + s, w + s)))
    return _defense_attack(run_dir, "ds", attack, n, patch, batch_size, device, seed, progress,
                           {"condition": "DS", "steps": steps, "step_size": step_size})


def attack_patchcleanser(run_dir, n: int | None = 100, patch=5, positions: int = 2, steps: int = 20,
                         step_size: float = 0.05, pairs: bool = False, batch_size: int = 100,
                         device=None, seed: int = 0, progress: bool = True) -> dict:
    """PGD on a PatchCleanser run (:func:`.patchcleanser.patch_attack`), on the first ``n`` test
    images of its fixed class-balanced subset: per image ``positions`` patch positions drawn
    uniformly (seeded), the patch pixels attacked against the first round's masked images (with
    ``pairs``, every mask pair's), the double-masking prediction checked at every iterate. Writes
    ``attack_patchcleanser.json``; a broken certified image raises :class:`UnsoundCertificate`."""
    def attack(model, cfg, x, y, patch, gen):
        ms = pc.mask_set(patch, tuple(x.shape[-2:]), cfg.num_masks, cfg.mask_stride)
        clean = pc.double_masking(model, x, ms, y, amp=cfg.amp)
        H, W = x.shape[-2:]
        broken = torch.zeros(len(y), dtype=torch.bool, device=x.device)
        for _ in range(positions):
            row = torch.randint(H - patch[0] + 1, (len(y),), generator=gen).to(x.device)
            col = torch.randint(W - patch[1] + 1, (len(y),), generator=gen).to(x.device)
            broken |= pc.patch_attack(model, x, y, ms, row, col, steps=steps, step_size=step_size,
                                      amp=cfg.amp, pairs=pairs, generator=gen)["broken"]
        correct = clean.prediction == y
        return correct, clean.certified, correct & ~broken, {"masks": len(ms)}

    return _defense_attack(run_dir, "patchcleanser", attack, n, patch, batch_size, device, seed,
                           progress, {"positions": positions, "steps": steps, "step_size": step_size,
                                      "pairs": pairs})


#: The attacks on a defense's own certificate by name (the sweep's ``attack-<name>`` steps, the
#: runs each attacks in rundir.ATTACKS_OF, their records in rundir.DEFENSE_ATTACK).
DEFENSE_ATTACKS = {"ds": attack_ds, "mask-ds": attack_mask_ds, "patchcleanser": attack_patchcleanser}


#: Options of PatchCleanser's attack alone (:func:`attack_patchcleanser`).
PATCHCLEANSER_ONLY = ("positions", "pairs")


def attack_all(run_dir, **kw) -> dict:
    """Every attack a run's defense gets, as the sweep runs them: the attacks on its own
    certificate (:data:`.rundir.ATTACKS_OF`: DS; DS and Mask-DS; PatchCleanser), else App. A.2's
    (:func:`attack_run`: BagCert, CBN, Mask-BN). ``kw`` (any of n, patch, steps, step_size,
    device, seed; PatchCleanser's positions and pairs) go to each, each attack's defaults
    otherwise. Returns {name: record}; a broken certified image raises :class:`UnsoundCertificate`."""
    run_dir = resolve_run_dir(run_dir)
    method = rundir.load_config(run_dir).method
    names = rundir.ATTACKS_OF.get(method, ())
    extra = [k for k in PATCHCLEANSER_ONLY if k in kw]
    if extra and names != ("patchcleanser",):
        raise ValueError(f"{' and '.join(extra)}: options of PatchCleanser's attack; {run_dir.name} "
                         f"is a {method} run")
    if not names:
        out = attack_run(run_dir, **kw)
        refuse_broken(run_dir, out, "App. A.2's attack")
        return {"app-a2": out}
    return {name: DEFENSE_ATTACKS[name](run_dir, **kw) for name in names}


def _example(model, cfg, clean, adv, label, res, i, patch) -> dict:
    """Images, true/target score maps before and after, and the R(l) rectangle (Figure 6)."""
    s = region_scores(model, torch.stack([clean, adv]), cfg.head, cfg.amp).cpu()
    target, row, col = int(res.target[i]), int(res.row[i]), int(res.col[i])
    (ph, pw), (H, W), (h_out, w_out) = patch, clean.shape[-2:], s.shape[-2:]
    r0, r1 = affected_range(H, h_out, ph, model.receptive_field, model.stride)
    c0, c1 = affected_range(W, w_out, pw, model.receptive_field, model.stride)
    return {"clean": clean.cpu().numpy(), "adversarial": adv.cpu().numpy(), "label": label,
            "target": target, "row": row, "col": col, "patch": np.array(patch),
            "flipped": bool(res.flipped[i]), "scores_true": s[:, label].numpy(),
            "scores_target": s[:, target].numpy(),
            "region": np.array([r0[row], r1[row], c0[col], c1[col]])}   # R(l*): rows, cols (incl.)
