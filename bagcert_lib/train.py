"""The training loop (§3.3, App. A.1): Adam, per-step cosine decay with linear warmup, margin loss.

``train(cfg, run_dir)`` writes one run directory::

    config.yaml       the TrainConfig
    checkpoint.pt     model, optimizer, scheduler, epoch, history (every epoch, and every
                      checkpoint_minutes within one: then also the step and RNG state)
    model.safetensors the weights only, shipped with the run (pretrained.load_pretrained)
    history.csv       per epoch: loss, lr, clean and certified accuracy on the held-out set, seconds
    provenance.json   git commit, torch version, device, dataset name + sha256, wall time, s/epoch;
                      segments: the commit and machine of every (re)start and its first epoch
    metrics.json      the last epoch's numbers, written last ("finished": every record is in)

config.yaml once at the start, the others in that order at every epoch's end, each atomically,
under the run folder's lock (``rundir``).

Rerunning with the same run directory resumes from checkpoint.pt and ends at the same result as an
uninterrupted run: every epoch reseeds its shuffling, augmentation and shake-shake noise from
(seed, epoch); a checkpoint written mid-epoch also holds the step reached and the RNG state, and
the resumed epoch skips the batches already trained on (drawing their augmentation numbers).
A checkpoint of the last epoch whose records are missing (a kill after it was written) is
completed: its weights and records are written from it. A finished run is left as it is
(``retrain=True`` trains it again from scratch); a different configuration under its name is
refused, naming the fields that differ.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import data as data_mod
from .config import REPO_ROOT, TrainConfig
from .methods import method_for
from .model import conv_macs, num_parameters, training_flops
from . import distributed, rundir
from .rundir import CHECKPOINT, RESUME_MAY_CHANGE, WEIGHTS, RunFolderError
from .runtime import (compiled, configure_backends, default_device, device_name, memory_format,
                      use_amp, use_channels_last, cpu_class, cpu_features)

def build_model(cfg: TrainConfig, num_classes: int = 10):
    """The model of ``cfg.method`` (:func:`~bagcert_lib.methods.method_for`): the region scorer
    (App. A.1) for BagCert, CBN and Mask-BN, a ResNet-18 base classifier for DS, Mask-DS and
    PatchCleanser."""
    return method_for(cfg).build_model(cfg, num_classes)


def load_data(cfg: TrainConfig):
    """The dataset for ``cfg``, subset to train_size, plus the fixed held-out evaluation set
    (in memory, or for ``imagenet`` file lists streamed batch by batch)."""
    full = data_mod.load_dataset(cfg.dataset, cfg.data)
    train = data_mod.subset(full, n_train=cfg.train_size, seed=0) if cfg.train_size else full
    ev = data_mod.subset(full, n_test=min(cfg.eval_size, len(full.y_test)), seed=0)
    return full, train, ev


def cosine_warmup(total_steps: int, warmup_steps: int):
    """LR factor per step: linear warmup to 1, then cosine decay to 0 (Loshchilov & Hutter)."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return factor


def git_commit(root=REPO_ROOT) -> dict:
    """The commit this code runs from; ``dirty``: a tracked file outside ``results/`` differs from
    it (the code, not the result files other runs are writing beside this one). A copy of the
    tree without ``.git`` (a rented GPU machine, a cluster's staging copy) names its commit in
    ``$BAGCERT_GIT_COMMIT``; whether that copy was dirty is then unknown (None)."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    try:
        commit = git("rev-parse", "HEAD") or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                         ":(exclude)results")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    if commit is None and os.environ.get("BAGCERT_GIT_COMMIT"):
        return {"commit": os.environ["BAGCERT_GIT_COMMIT"], "dirty": None,
                "from": "BAGCERT_GIT_COMMIT"}
    return {"commit": commit, "dirty": dirty}


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch


def test_batches(ds, cfg: TrainConfig, device, batch_size: int | None = None, model=None):
    """The test split of ``ds`` as batches: in memory (500 a batch), or streamed through the
    DataLoader with the centre crop (App. A.1.2; 100 a batch); in ``model``'s memory format."""
    channels_last = use_channels_last(device, cfg.channels_last, model)
    if isinstance(ds, data_mod.StreamingImages):
        return ds.batches("test", batch_size or 100, device=device, workers=cfg.workers,
                          channels_last=channels_last)
    return data_mod.batches(ds.x_test, ds.y_test, batch_size or 500, device=device,
                            channels_last=channels_last)


def evaluate(model, x, y, cfg: TrainConfig, device, patches=None, progress=False):
    """Clean and certified accuracy on in-memory (x, y); see :func:`evaluate_batches`."""
    loader = data_mod.batches(x, y, 500, device=device,
                              channels_last=use_channels_last(device, cfg.channels_last, model))
    return evaluate_batches(model, loader, cfg, device, patches, progress)


def evaluate_batches(model, loader, cfg: TrainConfig, device, patches=None, progress=False):
    """Clean and certified accuracy over ``loader``'s batches: the one evaluation loop. BagCert:
    Conditions 3.2 and 3.3 (§3.1); a DS run: the smoothed classifier's certificate (``DS``),
    a DS column run also robust masking on its column ablations (``Mask-DS``)."""
    return method_for(cfg).evaluate(model, loader, patches or [cfg.eval_patch], cfg, device,
                                     progress=progress)


def training_loss(model, x, y, cfg: TrainConfig, head=None, device=None):
    """One step's loss on a global batch (:class:`~bagcert_lib.methods.Method`): §3.3's margin
    loss for BagCert; cross-entropy on the mean local logit for CBN (Zhang et al., 2020) and on
    the masked clipped evidence for Mask-BN (Xiang et al., 2021); for DS and Mask-DS the
    cross-entropy on one random ablation per image (Levine & Feizi, 2020); for PatchCleanser the
    cross-entropy on Cutout-masked images (Xiang et al., 2022)."""
    method = method_for(cfg)
    return method.loss(model, method.prepare(x, cfg), y, cfg, device or x.device)


def estimate_cost(cfg: TrainConfig, n_train: int | None = None, device=None, steps: int = 3,
                  epochs_left: int | None = None) -> dict:
    """What a run costs on this machine, from ``steps`` timed training steps of a fresh copy of
    its model on random batches: nobody should start a 25-hour job believing it takes 5.

    ``n_train``: training images (default: train_size, else ImageNet's 1,281,167 for an ImageNet
    run and CIFAR-10's 50,000 otherwise). The estimate covers training only; per-epoch evaluation
    adds a few percent."""
    device = torch.device(device or cfg.device or default_device())
    n_train = n_train or cfg.train_size or (data_mod.TRAIN_IMAGES if cfg.dataset == "imagenet" else 50_000)
    size = (224, 224) if cfg.rf in (17, 25, 29) else (32, 32)
    gen = torch.Generator().manual_seed(0)
    model = build_model(cfg).to(device)
    channels_last = use_channels_last(device, cfg.channels_last, model)
    model = model.to(memory_format=memory_format(device, channels_last)).train()
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    x = torch.rand(cfg.batch_size, 3, *size, generator=gen).to(device)
    x = x.contiguous(memory_format=memory_format(device, channels_last))
    y = torch.randint(0, 10, (cfg.batch_size,), generator=gen).to(device)
    rng = torch.get_rng_state()           # shake-shake draws from it; leave the run's untouched
    try:
        for i in range(steps + 1):            # the first step warms up (allocations, kernels)
            if i == 1:
                _sync(device)
                t0 = time.perf_counter()
            loss = training_loss(model, x, y, cfg, device=device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        step_s = (time.perf_counter() - t0) / steps
    finally:
        torch.set_rng_state(rng)
    per_epoch = step_s * (n_train // cfg.batch_size)
    epochs = cfg.epochs if epochs_left is None else epochs_left
    return {"device": device_name(device), "cpu_class": cpu_class() if device.type == "cpu" else None,
            "bf16": use_amp(device, cfg.amp), "channels_last": channels_last,
            "steps_timed": steps, "seconds_per_step": step_s, "seconds_per_epoch": per_epoch,
            "epochs": epochs,
            "seconds": per_epoch * epochs}


def describe_cost(est: dict) -> str:
    def hm(s):
        return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"
    prec = "bf16" if est["bf16"] else "fp32"
    fmt = "channels_last" if est["channels_last"] else "contiguous"
    where = est["device"] + (f", {est['cpu_class']}" if est.get("cpu_class") else "")
    return (f"estimated cost on {where}, {prec}, {fmt}: {est['seconds_per_step']:.2f} s/step, "
            f"{hm(est['seconds_per_epoch'])} per epoch, {hm(est['seconds'])} for "
            f"{est['epochs']} epochs of training (timed on {est['steps_timed']} steps just now)")


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# rundir.RESUME_MAY_CHANGE: config fields a run may change when it resumes: the device, the
# data's location (the dataset itself is pinned by its sha256 in provenance.json), the memory
# format, compilation and the number of DataLoader workers (same numbers: augmentation is seeded
# per image, not per worker), how often it checkpoints, and the test images its certification
# later uses (test_size). The number of processes is not a
# config field either: a run may resume with another world size.


def epoch_batches(x, y, cfg: TrainConfig, epoch: int, device, channels_last: bool, method=None,
                  ctx: distributed.Context | None = None, streamed=None, start: int = 0):
    """This process's share of an epoch's training batches: the global batches (order and
    augmentation seeded by (seed, epoch); ``streamed``: an ImageNet-style folder decoded in
    DataLoader workers, App. A.1.2), ``method.prepare`` applied to each, then the rank's slice.
    The slices of all ranks, in rank order, are the one-process run's batches. ``start``: from
    the epoch's batch ``start`` on (a run resumed mid-epoch)."""
    method = method or method_for(cfg)
    if streamed is not None:      # every rank decodes the global batch, then keeps its slice
        glob = streamed.batches("train", cfg.batch_size, augment=cfg.augment, shuffle=True,
                                epoch_seed=_epoch_seed(cfg.seed, epoch), device=device,
                                workers=cfg.workers, drop_last=True, channels_last=channels_last,
                                start=start)
    else:
        gen = torch.Generator().manual_seed(_epoch_seed(cfg.seed, epoch))
        glob = data_mod.batches(x, y, cfg.batch_size, shuffle=True, generator=gen, device=device,
                                augment=cfg.augment, drop_last=True, channels_last=channels_last,
                                start=start)
    for xb, yb in glob:
        xb = method.prepare(xb, cfg)
        yield distributed.shard(xb, ctx), distributed.shard(yb, ctx)


def train(cfg: TrainConfig, run_dir, *, resume: bool = True, retrain: bool = False,
          progress: bool = True, stop_after: int | None = None,
          stop_after_steps: int | None = None) -> dict:
    """Train one configuration into ``run_dir`` (resuming if a checkpoint is there), holding
    its lock (:func:`rundir.lock`: a second writer is refused).

    A finished run is left untouched (returned with ``skipped``: its model and history);
    ``retrain``: its files are deleted and it is trained again from scratch. A run folder of
    another configuration is refused (RunFolderError listing the fields that differ).
    ``stop_after``: return after that many epochs of this call; ``stop_after_steps``: after that
    many training steps, as if killed just after its last mid-epoch checkpoint (both to test
    resuming). Under torchrun every process calls this; rank 0 alone locks and writes the run
    directory (``distributed.py``).
    """
    cfg.validate()
    ctx = distributed.setup(cfg.device, cfg.batch_size)    # world size 1 without torchrun
    try:
        with rundir.lock(run_dir, "training") if ctx.is_main else contextlib.nullcontext() as me:
            if me is not None and me.previous is not None and progress:
                print(f"{run_dir}: took over the lock of {me.previous}, which is no longer running")
            return _train(cfg, run_dir, ctx, resume=resume and not retrain, retrain=retrain,
                          progress=progress and ctx.is_main, stop_after=stop_after,
                          stop_after_steps=stop_after_steps)
    finally:
        distributed.teardown(ctx)


def _check_run_folder(cfg: TrainConfig, run_dir: Path, retrain: bool, is_main: bool,
                      progress: bool) -> bool:
    """Before training into ``run_dir``: False when it holds a finished run (left as it is);
    RunFolderError when it holds another configuration, or weights that no checkpoint resumes.
    ``retrain`` (rank 0): the old run's files are deleted first."""
    if (run_dir / rundir.CONFIG).is_file():
        differ = rundir.config_differences(rundir.read_config(run_dir), cfg.to_dict())
        if differ:
            raise RunFolderError(f"{run_dir} holds a run of a different configuration "
                                 f"({'; '.join(differ)}); train into another folder (--name)")
    if retrain:
        if is_main:
            gone = rundir.remove(run_dir, (*rundir.TRAINING_FILES, *rundir.RESULT_FILES))
            gone += rundir.remove(run_dir, [p.name for p in run_dir.glob("certification_*.csv")])
            if progress and gone:
                print(f"retraining {run_dir}: deleted {', '.join(gone)}")
        return True
    if rundir.finished(run_dir):
        if progress:
            print(f"{run_dir} is finished ({rundir.state(run_dir)}, {rundir.epochs_done(run_dir)}/"
                  f"{cfg.epochs} epochs): left as it is; to train it again, use another --name "
                  "or --retrain (which deletes its files)")
        return False
    if (run_dir / WEIGHTS).is_file() and not (run_dir / CHECKPOINT).is_file():
        raise RunFolderError(f"{run_dir} holds {WEIGHTS} but no {CHECKPOINT} to resume from: training "
                             "would overwrite them; use another --name, or --retrain to replace them")
    return True


def _finished_run(cfg: TrainConfig, run_dir: Path, device) -> dict:
    """What :func:`train` returns for a finished run it left untouched."""
    if (run_dir / WEIGHTS).is_file():
        state, _ = rundir.read_weights(run_dir / WEIGHTS)
        model = build_model(cfg, num_classes=state[method_for(cfg).classifier_key].shape[0])
        rundir.check_weights(state, model.state_dict(), run_dir / WEIGHTS)
        model.load_state_dict(state)
        model = model.to(device)
    elif (run_dir / CHECKPOINT).is_file():
        model, _ = load_checkpoint_model(run_dir, device)
    else:
        model = None
    hist = run_dir / rundir.HISTORY
    history = rundir.read_csv(hist) if hist.is_file() else pd.DataFrame()
    return {"model": model, "history": history, "run_dir": run_dir, "finished": True,
            "skipped": True}


def _train(cfg, run_dir, ctx, *, resume, progress, stop_after, stop_after_steps=None,
           retrain=False):
    git = git_commit()      # the code this process runs, recorded once at start
    run_dir = Path(run_dir)
    device = ctx.device
    if not _check_run_folder(cfg, run_dir, retrain, ctx.is_main, progress):
        return _finished_run(cfg, run_dir, device)
    configure_backends()
    full, train_data, eval_data = load_data(cfg)           # raises before any training
    size = data_mod.image_size(full)
    streamed = isinstance(full, data_mod.StreamingImages)
    if cfg.eval_patch > min(size):
        raise ValueError(f"eval_patch {cfg.eval_patch} is larger than the image {size[1]}x{size[0]}")
    torch.manual_seed(cfg.seed)             # the same initial weights on every rank
    method = method_for(cfg)
    model = method.build_model(cfg, num_classes=len(full.classes)).to(device)
    model = distributed.sync_batchnorm(model, ctx, cfg.sync_bn)    # BN over the global batch
    channels_last = use_channels_last(device, cfg.channels_last, model)   # AVX2: only if safe
    model = model.to(memory_format=memory_format(device, channels_last))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = data_mod.num_batches(len(train_data.y_train), cfg.batch_size, drop_last=True)
    if steps_per_epoch == 0:
        raise ValueError(f"train_size {len(train_data.y_train)} is smaller than batch_size {cfg.batch_size}")
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_warmup(
        cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)))

    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    start_epoch, history, wall_before, segments = 0, [], 0.0, []
    start_step, partial = 0, None           # a checkpoint written mid-epoch: where in the epoch
    if resume and ckpt_path.exists():
        ck = rundir.load_checkpoint(ckpt_path, map_location=device)   # never unpickles
        # fields added later take their defaults; where a run continues is not what it is
        changed = rundir.config_differences(ck["config"], cfg.to_dict())
        if changed:
            raise RunFolderError(f"{ckpt_path} was written by a different configuration "
                                 f"({'; '.join(changed)}); use another run directory or resume=False")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        start_epoch, history, wall_before = ck["epoch"] + 1, ck["history"], ck["wall_s"]
        segments = ck.get("segments", [])
        start_step, partial = ck.get("step", 0), ck.get("partial")
        if progress and start_epoch == cfg.epochs and not start_step:
            print(f"completing {run_dir}: {CHECKPOINT} holds all {cfg.epochs} epochs; writing its "
                  "weights and records from it")
        elif progress:
            within = (f", {start_step}/{steps_per_epoch} steps into epoch {start_epoch + 1}"
                      if start_step else "")
            print(f"resuming {run_dir} at epoch {start_epoch}/{cfg.epochs}{within}")
    if ctx.is_main:
        rundir.write_yaml(run_dir / rundir.CONFIG, cfg.to_dict())
    net = compiled(distributed.parallel(model, ctx), cfg.compile)   # DDP when world size > 1

    devices = distributed.gather_objects(device_name(device), ctx)
    if start_epoch < cfg.epochs and ctx.is_main:   # which code and machines trained which epochs
        # one process's cost (a step of the whole global batch on rank 0's device)
        est = estimate_cost(cfg, len(train_data.y_train), device, epochs_left=cfg.epochs - start_epoch)
        if progress:
            print(describe_cost(est), flush=True)
        if segments and "cpu_class" not in segments[-1]:
            _backfill_segments(segments, run_dir)
        segments.append({"from_epoch": start_epoch + 1, **({"from_step": start_step + 1} if start_step else {}),
                         "git": git, "device": device_name(device),
                         "torch": str(torch.__version__), **_precision(device, cfg, channels_last),
                         "estimated_s_per_epoch": round(est["seconds_per_epoch"], 1),
                         **distributed.describe(ctx, devices)})
    x_train = y_train = None
    if not streamed:
        x_train = train_data.x_train.to(device)
        y_train = train_data.y_train.to(device)
    t_start = time.perf_counter()
    every_s = 60 * float(cfg.checkpoint_minutes)
    steps_done = 0                                          # in this call (stop_after_steps)
    for epoch in range(start_epoch, cfg.epochs):
        if (stop_after is not None and epoch - start_epoch >= stop_after
                or stop_after_steps is not None and steps_done >= stop_after_steps):
            break
        first = start_step if epoch == start_epoch else 0
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))     # shake-shake noise: same on every rank
        losses = torch.zeros((), device=device)
        t0 = time.perf_counter()
        if first:          # resumed mid-epoch: the RNG, loss sum and seconds of the steps before
            _set_rng_state(partial["rng"], device)
            losses += partial["loss_sum"].to(device)
            t0 -= partial["train_s"]
        loader = epoch_batches(x_train, y_train, cfg, epoch, device, channels_last, method, ctx,
                               streamed=train_data if streamed else None, start=first)
        net.train()
        bar = tqdm(loader, total=steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not progress, leave=False)
        t_saved = time.perf_counter()
        for step, (x, y) in enumerate(bar, start=first):
            loss = method.loss(net, x, y, cfg, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses += loss.detach()
            steps_done += 1
            if progress and step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
            if (every_s and ctx.is_main and step + 1 < steps_per_epoch
                    and time.perf_counter() - t_saved >= every_s):
                # rank 0's loss sum and RNG (the RNG is the same on every rank, the loss sum is
                # rank 0's share: a resumed epoch's logged loss may differ, its training not)
                _save_checkpoint(ckpt_path, model, opt, sched, cfg, history, segments,
                                 epoch=epoch - 1, wall=wall_before + time.perf_counter() - t_start,
                                 step=step + 1, partial={"rng": _rng_state(device),
                                                         "loss_sum": losses.detach().cpu(),
                                                         "train_s": time.perf_counter() - t0})
                t_saved = time.perf_counter()
            if stop_after_steps is not None and steps_done >= stop_after_steps:
                break
        if stop_after_steps is not None and steps_done >= stop_after_steps and step + 1 < steps_per_epoch:
            break                   # as if killed mid-epoch: the last checkpoint stands
        losses = distributed.all_reduce_mean(losses, ctx)    # mean over the global batches
        if not bool(torch.isfinite(losses)):                 # nothing of this epoch is saved
            raise FloatingPointError(
                f"training {run_dir} diverged in epoch {epoch + 1}: its loss is {losses.item()}; "
                f"the last checkpoint ({CHECKPOINT}, epoch {epoch}) stands. Lower --lr")
        train_s = time.perf_counter() - t0
        row = None
        if ctx.is_main:      # rank 0 evaluates and writes; the others wait for its row
            ev = evaluate_batches(model, test_batches(eval_data, cfg, device, model=model), cfg,
                                  device).set_index("condition")
            row = {"epoch": epoch + 1, "loss": (losses / steps_per_epoch).item(),
                   "lr": float(sched.get_last_lr()[0]),
                   "clean_accuracy": float(ev.clean_accuracy.iloc[0]),
                   "certified_accuracy": float(ev.certified_accuracy.get(method.condition)),
                   "certified_global_accuracy": float(ev.certified_accuracy.get("3.3", float("nan"))),
                   "train_s": train_s, "epoch_s": time.perf_counter() - t0,
                   "images_per_s": steps_per_epoch * cfg.batch_size / train_s}
        history.append(distributed.broadcast_object(row, ctx))
        if not ctx.is_main:
            continue
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {row['loss']:.4f}  clean {row['clean_accuracy']:.3f}"
                       f"  certified({cfg.eval_patch}x{cfg.eval_patch}) {row['certified_accuracy']:.3f}"
                       f"  {row['images_per_s']:.0f} img/s")
        wall = wall_before + time.perf_counter() - t_start
        _save_checkpoint(ckpt_path, model, opt, sched, cfg, history, segments, epoch=epoch, wall=wall)
        rundir.save_weights(model, cfg, run_dir / WEIGHTS, run=run_dir.name, epoch=epoch + 1,
                            git_commit=git.get("commit"))         # the shipped model
        _write_records(run_dir, cfg, model, full, train_data, eval_data, history, device, wall,
                       segments)
    if (ctx.is_main and start_epoch == cfg.epochs and not start_step and history
            and not rundir.finished(run_dir)):   # killed after the last checkpoint: complete it
        segments = segments or [{"git": git, "device": device_name(device),
                                 **_precision(device, cfg, channels_last)}]
        rundir.save_weights(model, cfg, run_dir / WEIGHTS, run=run_dir.name, epoch=len(history),
                            git_commit=segments[-1]["git"].get("commit") if segments else None)
        _write_records(run_dir, cfg, model, full, train_data, eval_data, history, device,
                       wall_before, segments)
    return {"model": model, "history": pd.DataFrame(history), "run_dir": run_dir,
            "finished": len(history) == cfg.epochs}


def _save_checkpoint(path: Path, model, opt, sched, cfg, history, segments, *, epoch: int,
                     wall: float, step: int = 0, partial: dict | None = None):
    """checkpoint.pt after ``epoch`` (0-based; -1: none yet) and ``step`` steps into the next, with
    that epoch's RNG state, loss sum and seconds in ``partial``. Written atomically: a kill
    never corrupts it."""
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(),
             "scheduler": sched.state_dict(), "epoch": epoch, "history": history,
             "config": cfg.to_dict(), "wall_s": wall, "segments": segments}
    if step:
        state.update(step=step, partial=partial)
    rundir.save_checkpoint(path, state)


def _rng_state(device) -> dict:
    """The generator that shake-shake noise (and DS's ablations) draw from, on ``device``."""
    device = torch.device(device)
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def _set_rng_state(state: dict, device):
    torch.set_rng_state(state["cpu"])
    if state.get("cuda") is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], torch.device(device))


def _precision(device, cfg: TrainConfig, channels_last: bool) -> dict:
    """What decides a segment's speed: CPU class (or GPU), bf16 or fp32, memory format."""
    on_cpu = torch.device(device).type == "cpu"
    return {"cpu_class": cpu_class() if on_cpu else "cuda", "cpu": cpu_features() if on_cpu else None,
            "amp_bf16": use_amp(device, cfg.amp), "channels_last": channels_last}


def _backfill_segments(segments: list, run_dir: Path):
    """Segments written before they recorded their CPU class take it from the run's last
    provenance.json (written by the last of them). Marked ``"precision_from": "provenance.json"``."""
    try:
        prov = rundir.read_json(run_dir / rundir.PROVENANCE)
    except (OSError, ValueError):
        return
    if not prov.get("cpu"):
        return
    for seg in segments:
        if "cpu_class" not in seg:
            seg.update(cpu_class=cpu_class(prov["cpu"]), cpu=prov["cpu"],
                       amp_bf16=prov.get("amp_bf16"), channels_last=prov.get("channels_last"),
                       precision_from="provenance.json")


def _write_records(run_dir, cfg, model, full, train_data, eval_data, history, device, wall,
                   segments):
    """history.csv, provenance.json, then metrics.json (rank 0 only; each atomic): metrics.json
    comes last, so a run whose metrics.json says ``finished`` has every record."""
    rundir.write_csv(run_dir / rundir.HISTORY, pd.DataFrame(history))
    last = history[-1]
    metrics = {k: last[k] for k in ("epoch", "loss", "clean_accuracy", "certified_accuracy",
                                    "certified_global_accuracy")}
    metrics.update(eval_set=f"first {len(eval_data.y_test)} of a class-balanced test subset",
                   eval_patch=cfg.eval_patch, finished=len(history) == cfg.epochs)
    train_s = [h["train_s"] for h in history]
    macs = conv_macs(model, data_mod.image_size(full))
    images_seen = len(history) * (len(train_data.y_train) // cfg.batch_size) * cfg.batch_size
    prov = {"git": segments[-1]["git"], "torch": torch.__version__, "device": device_name(device),
            "amp_bf16": segments[-1]["amp_bf16"], "cpu": cpu_features(),
            "channels_last": segments[-1]["channels_last"], "dataset": full.describe(),
            "n_train": len(train_data.y_train), "n_eval": len(eval_data.y_test),
            "parameters": num_parameters(model), "macs_per_image": macs,
            "images_seen": images_seen, "training_flops": training_flops(macs, images_seen),
            "receptive_field": getattr(model, "receptive_field", None),
            "stride": getattr(model, "stride", None), "wall_s": wall, "epochs_done": len(history),
            "seconds_per_epoch": float(np.median(train_s)),
            "images_per_s": float(np.median([h["images_per_s"] for h in history])),
            "segments": segments}
    prov.update({k: segments[-1].get(k, d) for k, d in (("world_size", 1), ("backend", None),
                                                         ("devices", [prov["device"]]))})
    rundir.write_json(run_dir / rundir.PROVENANCE, prov)
    rundir.write_json(run_dir / rundir.METRICS, metrics)


class CheckpointPosition(NamedTuple):
    """Where a resume checkpoint stands: ``epochs_done`` whole epochs, ``step`` steps into the
    next one (0 at an epoch's end), of the ``epochs`` its run plans."""
    epochs_done: int
    step: int
    epochs: int

    @property
    def finished(self) -> bool:
        return self.step == 0 and self.epochs_done == self.epochs


def checkpoint_position(run_dir) -> CheckpointPosition:
    """Where a run's resume checkpoint stands (:class:`CheckpointPosition`)."""
    ck = rundir.load_checkpoint(Path(run_dir) / CHECKPOINT)
    return CheckpointPosition(ck["epoch"] + 1, ck.get("step", 0), ck["config"]["epochs"])


def load_checkpoint_model(run_dir, device=None):
    """The model and config of a run's resume checkpoint (loaded with ``weights_only=True``)."""
    run_dir = Path(run_dir)
    ck = rundir.load_checkpoint(run_dir / CHECKPOINT, map_location=device or "cpu")
    cfg = TrainConfig(**ck["config"])
    model = build_model(cfg, num_classes=ck["model"][method_for(cfg).classifier_key].shape[0])
    rundir.check_weights(ck["model"], model.state_dict(), run_dir / CHECKPOINT)
    model.load_state_dict(ck["model"])
    return model.to(device or "cpu").eval(), cfg
