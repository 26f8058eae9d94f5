"""The run folder: its layout, every read and write of its files, its state and its lock.

A run folder holds the evidence of one configuration (every figure, claim and shipped model is
read from one)::

    config.yaml         the TrainConfig                                     (train)
    checkpoint.pt       resume state, read with weights_only=True           (train)
    model.safetensors   the weights, never unpickled                        (train, export)
    history.csv         per epoch: loss, lr, held-out clean / certified accuracy, seconds
    provenance.json     code, machine, data and cost of the training
    metrics.json        the last epoch's numbers; written last, so "finished" in it means
                        that every training record above is complete
    certification.csv   per patch shape and condition, on the test split      (certify)
    certification.parts/  a certification in progress: plan.json, one CSV per finished chunk
                        of test images, one .claim per chunk (who certifies it); merged into
                        certification.csv and removed at the end
    attack_samples.csv, attack_example.npz, attack.json (written last)      (attack)
    attack_ds.json, attack_mask_ds.json, attack_patchcleanser.json
                        the attacks on a defense's own certificate          (attack-<name>)
    previous.json       what a retrained run replaced                       (sweep)
    retrain/<name>/     the same run being trained again beside it          (sweep)
    .lock               who is writing: pid, host, since

State, in order: ``training`` (config.yaml, not finished) → ``trained`` (metrics.json says
finished) → ``certified`` (certification.csv) → ``attacked`` (attack.json).

Every file is written by :func:`write` and its helpers: a temporary file in the same folder,
flushed and fsynced, then ``os.replace`` — a kill leaves the old file or the new one, never a
torn one. Every writer holds :func:`lock` (``flock`` on ``.lock``, which names the holder): a
second writer is refused with one line naming the first, and the lock of a process that died
is free again and taken over. One exception: a process that joins a certification
(:meth:`Parts.join`) writes only its chunks into ``certification.parts/``, each under that
chunk's claim, while the certification's owner holds the lock. Every reader raises :class:`RunFolderError` naming the file, what
is wrong with it and what it should hold. No other module writes into a run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from .config import REPO_ROOT, TrainConfig, parse_test_size

CONFIG = "config.yaml"
CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"
HISTORY = "history.csv"
PROVENANCE = "provenance.json"
METRICS = "metrics.json"
CERTIFICATION = "certification.csv"
ATTACK = "attack.json"
ATTACK_SAMPLES = "attack_samples.csv"
ATTACK_EXAMPLE = "attack_example.npz"
#: The record of each attack on a defense certified by its own analysis rather than App. A.2's
#: (Derandomized Smoothing, Mask-DS, PatchCleanser), by the attack's name.
DEFENSE_ATTACK = {"ds": "attack_ds.json", "mask-ds": "attack_mask_ds.json",
                  "patchcleanser": "attack_patchcleanser.json"}
#: The attacks a run of each such method gets, in order: a DS column run carries two certificates.
ATTACKS_OF = {"ds-block": ("ds",), "ds-column": ("ds", "mask-ds"), "patchcleanser": ("patchcleanser",)}
#: A certification saved as it goes: ``certification.csv`` → ``certification.parts/`` (:class:`Parts`).
PARTS = ".parts"
PLAN = "plan.json"
#: The key of a saved chunk's ``.json`` that names its plan (sha256 of plan.json's content).
PLAN_KEY = "plan_sha256"
PREVIOUS = "previous.json"
RETRAIN = "retrain"
LOCK = ".lock"

#: What makes a run folder usable for certification and the attack: shipped weights, or the
#: resume checkpoint of a run trained on this machine.
MODEL_FILES = (WEIGHTS, CHECKPOINT)

#: The files a training writes (metrics.json last), and what certify and the attack add.
TRAINING_FILES = (CHECKPOINT, WEIGHTS, HISTORY, PROVENANCE, METRICS)
RESULT_FILES = (CERTIFICATION, ATTACK_SAMPLES, ATTACK_EXAMPLE, ATTACK)

#: Config fields a run may change when it resumes: where it runs and how fast, not what it is
#: (the dataset itself is pinned by its sha256 in provenance.json). See ``train.py``.
RESUME_MAY_CHANGE = ("device", "data", "channels_last", "compile", "workers", "checkpoint_minutes",
                     "test_size")


class RunFolderError(ValueError):
    """A file of a run folder that cannot be used: the message names it, says what is wrong
    and what it should hold."""


class RunLocked(RuntimeError):
    """Another process is writing the run folder; the message names it (pid, host, since)."""


class NotSafetensorsError(RunFolderError):
    """A weights file that is not a valid safetensors file (e.g. a pickle): refused, never loaded."""


def results_dir() -> Path:
    """Parent of all run folders: ``$BAGCERT_RESULTS``, else results/runs in the repository."""
    return Path(os.environ.get("BAGCERT_RESULTS") or REPO_ROOT / "results" / "runs")


# --------------------------------------------------------------------------------------------
# Writing: atomic, one file at a time
# --------------------------------------------------------------------------------------------

_FAULTS: dict = {}


def fault_point(stage: str, name: str) -> None:
    """Where the fault tests stop a writer with SIGKILL: ``$BAGCERT_KILL`` = ``stage:file:n``
    kills this process the n-th time ``stage`` (``written``: the temporary file is complete, not
    yet renamed; ``renamed``: the file is in place) is reached for ``file``. Unset: nothing."""
    want = os.environ.get("BAGCERT_KILL")
    if not want:
        return
    w_stage, w_name, n = (want.split(":") + ["1"])[:3]
    if (w_stage, w_name) == (stage, name):
        _FAULTS[want] = _FAULTS.get(want, 0) + 1
        if _FAULTS[want] == int(n):
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def write(path, writer) -> Path:
    """Write ``path`` atomically: ``writer(tmp)`` fills a temporary file beside it (bytes or
    str, or a callable given the temporary path), which is fsynced and renamed over ``path``.
    New files get the usual permissions (umask), not a temporary file's 0600."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if callable(writer):
            writer(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(writer.encode() if isinstance(writer, str) else writer)
        with open(tmp, "rb+") as f:
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        fault_point("written", path.name)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    fault_point("renamed", path.name)
    return path


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):          # not every OS / file system allows it
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_json(path, obj) -> Path:
    return write(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_yaml(path, obj: dict) -> Path:
    import yaml

    return write(path, yaml.safe_dump(obj, sort_keys=False))


def write_csv(path, df, **kw) -> Path:
    kw.setdefault("index", False)
    return write(path, df.to_csv(**kw))


def write_npz(path, **arrays) -> Path:
    import numpy as np

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return write(path, buf.getvalue())


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save`` of ``state`` (tensors, numbers, strings, lists and dicts only: what
    ``weights_only=True`` loads back), atomically."""
    import torch

    return write(path, lambda tmp: torch.save(state, tmp))


def save_weights(model, cfg: TrainConfig, path, **metadata) -> Path:
    """``model``'s state dict (floating tensors as float32, contiguous) as safetensors, with
    ``cfg`` and ``metadata`` as strings in its header; atomically."""
    import torch
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    meta = {"format": "bagcert", "config": json.dumps(cfg.to_dict()),
            **{k: str(v) for k, v in metadata.items()}}
    return write(path, lambda tmp: save_file(state, str(tmp), metadata=meta))


def remove(run_dir, names) -> list[str]:
    """Delete these files of ``run_dir`` (those that exist); returns the names deleted."""
    gone = []
    for name in names:
        p = Path(run_dir) / name
        if p.is_file():
            p.unlink()
            gone.append(name)
    return gone


def move_in(run_dir, new) -> None:
    """Replace ``run_dir``'s files by those of the run folder ``new`` (a finished retrain, see
    ``sweep.replace_with_retrain``): ``run_dir``'s own files go, ``new``'s move up, ``new``
    goes. Safe to repeat after an interruption (what has moved stays moved)."""
    import shutil

    run_dir, new = Path(run_dir), Path(new)
    for p in run_dir.iterdir():
        if p.name not in (LOCK, RETRAIN):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for p in list(new.iterdir()):
        if p.name != LOCK:
            os.replace(p, run_dir / p.name)
    shutil.rmtree(run_dir / RETRAIN)
    _fsync_dir(run_dir)


# --------------------------------------------------------------------------------------------
# Reading: every failure names the file
# --------------------------------------------------------------------------------------------

def _bad(path, what: str, fix: str = "") -> RunFolderError:
    return RunFolderError(f"{path}: {what}" + (f"; {fix}" if fix else ""))


def read_json(path, default=None) -> dict:
    """A JSON object file; ``default`` (None: ``{}``) when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return {} if default is None else default
    text = path.read_text()
    if not text.strip():
        raise _bad(path, "is empty (a write that did not finish?)", "expected a JSON object")
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise _bad(path, f"is not valid JSON ({e})", "expected a JSON object") from None
    if not isinstance(obj, dict):
        raise _bad(path, f"holds a JSON {type(obj).__name__}", "expected a JSON object")
    return obj


def read_csv(path, **kw):
    """A CSV table with a header row (pandas)."""
    import pandas as pd

    path = Path(path)
    try:
        return pd.read_csv(path, **kw)
    except pd.errors.EmptyDataError:
        raise _bad(path, "is empty (a write that did not finish?)",
                   "expected a CSV table with a header row; delete it to write it again") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise _bad(path, f"is not a valid CSV table ({' '.join(str(e).split())})",
                   "delete it to write it again") from None


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _type_ok(value, annotation: str) -> bool:
    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None:
        return "None" in kinds
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return "int" in kinds or "float" in kinds
    if isinstance(value, float):
        return "float" in kinds and math.isfinite(value)
    if isinstance(value, str):
        return "str" in kinds
    return False


def check_config(values, where) -> dict:
    """``values`` (a config.yaml's content) as a dict of known TrainConfig fields of the right
    types, finite numbers and valid values (:meth:`TrainConfig.validate`); else RunFolderError
    naming ``where``. Fields a config lacks take their defaults."""
    if values is None:
        raise _bad(where, "is empty", "expected a mapping of TrainConfig fields (rf: 7, ...)")
    if not isinstance(values, dict):
        raise _bad(where, f"holds a {type(values).__name__}",
                   "expected a mapping of TrainConfig fields (rf: 7, ...)")
    unknown = sorted(str(k) for k in values if k not in _FIELDS)
    if unknown:
        raise _bad(where, f"unknown keys {unknown}", f"allowed: {', '.join(_FIELDS)}")
    for k, v in values.items():
        if not _type_ok(v, _FIELDS[k].type):
            raise _bad(where, f"{k} is {v!r} ({type(v).__name__})",
                       f"expected {_FIELDS[k].type} (numbers finite)")
    try:
        TrainConfig(**values).validate()
    except (TypeError, ValueError) as e:
        raise _bad(where, str(e)) from None
    return dict(values)


def read_config(run_dir) -> dict:
    """A run folder's config.yaml, validated (:func:`check_config`), as it is written (fields
    it lacks are absent: :func:`load_config` fills in their defaults)."""
    import yaml

    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a run folder")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise _bad(path, f"is not valid YAML ({' '.join(str(e).split())})",
                   "expected a mapping of TrainConfig fields (rf: 7, ...)") from None
    return check_config(values, path)


def load_config(run_dir) -> TrainConfig:
    """A run folder's validated :class:`TrainConfig`."""
    return TrainConfig(**read_config(run_dir))


def config_differences(old: dict, new: dict, ignore=RESUME_MAY_CHANGE) -> list[str]:
    """``field old → new`` for every TrainConfig field that differs (missing fields take their
    defaults), leaving out ``ignore``."""
    a, b = TrainConfig(**old).to_dict(), TrainConfig(**new).to_dict()
    return [f"{k} {a[k]!r} → {b[k]!r}" for k in a if k not in ignore and a[k] != b.get(k)]


def load_checkpoint(path, map_location="cpu") -> dict:
    """checkpoint.pt with ``weights_only=True`` (tensors, numbers, strings, containers: it
    never runs code); a file it refuses, or a truncated one, raises RunFolderError naming it."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    try:
        ck = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError,
            AttributeError, TypeError, OSError) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise _bad(path, f"cannot be loaded as a resume checkpoint with weights_only=True "
                   f"({first.strip()[:200]})",
                   "it may hold code or be damaged: delete it (training then starts again) "
                   "or use another run folder") from None
    if not isinstance(ck, dict) or not {"model", "epoch", "config"} <= set(ck):
        raise _bad(path, "is not a resume checkpoint (no model, epoch and config)")
    check_config(ck["config"], f"{path} (its config)")
    return ck


def read_weights(path) -> tuple[dict, dict]:
    """(state dict, metadata) of a safetensors file; anything else raises NotSafetensorsError."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {path}")
    with open(path, "rb") as f:          # safetensors: 8-byte header length, then a JSON header
        head = f.read(9)
    n = int.from_bytes(head[:8], "little") if len(head) == 9 else -1
    if not (0 < n <= path.stat().st_size - 8 and head[8:9] == b"{"):      # e.g. pickle, zip
        raise NotSafetensorsError(f"{path} is not a safetensors file (pickle or torch.save data "
                                  "is refused: it could run code when loaded)")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise NotSafetensorsError(f"{path} is not a valid safetensors file: {e}") from None


def check_weights(state: dict, expected: dict, path) -> None:
    """``state`` (read from ``path``) fits a model whose state dict is ``expected``: the same
    names and shapes, floating tensors where the model has them (float16, bfloat16, float32 or
    float64), integer ones where it counts (BatchNorm's ``num_batches_tracked``), every value
    finite. Else RunFolderError naming the first tensor that does not fit."""
    import torch

    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise _bad(path, f"does not fit its config.yaml's model (missing {missing[:3]}, "
                   f"unexpected {unexpected[:3]})")
    for k, want in expected.items():
        got = state[k]
        if tuple(got.shape) != tuple(want.shape):
            raise _bad(path, f"tensor {k!r} has shape {tuple(got.shape)}, the model of its "
                       f"config.yaml expects {tuple(want.shape)}")
        if want.is_floating_point() != got.is_floating_point():
            raise _bad(path, f"tensor {k!r} has dtype {str(got.dtype).replace('torch.', '')}",
                       "allowed: " + ("a floating type (float16, bfloat16, float32, float64)"
                                      if want.is_floating_point() else "an integer type"))
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise _bad(path, f"tensor {k!r} holds NaN or infinite values", "weights must be finite")


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------

def finished(run_dir) -> bool:
    """Training finished and every training record written (metrics.json, written last)."""
    return bool(read_json(Path(run_dir) / METRICS).get("finished", False))


def epochs_done(run_dir) -> int:
    """Whole epochs trained in ``run_dir`` (its metrics.json, written at every epoch's end)."""
    return int(read_json(Path(run_dir) / METRICS).get("epoch", 0) or 0)


def step_done(run_dir, step: str) -> bool:
    """Whether ``step`` (train, certify, attack, or ``attack-<name>``: :data:`DEFENSE_ATTACK`)
    has left its results in ``run_dir``."""
    if step == "train":
        return finished(run_dir)
    files = {"certify": CERTIFICATION, "attack": ATTACK,
             **{f"attack-{a}": f for a, f in DEFENSE_ATTACK.items()}}
    return (Path(run_dir) / files[step]).is_file()


def certification_covers(run_dir, test_size) -> bool:
    """Whether every row of ``run_dir``'s certification.csv certified ``test_size`` test images
    (a number, or None / ``"all"``: the whole split; a row's split may be smaller). A row written
    before rows recorded the split's size (``test_split``) covers "all" only when the run's
    config.yaml asked for the whole split."""
    path = Path(run_dir) / CERTIFICATION
    if not path.is_file():
        return False
    want = parse_test_size(test_size)
    rows = read_csv(path)
    if "n" not in rows:
        raise _bad(path, "has no n column (test images certified)",
                   "delete it to certify the run again")
    split = rows["test_split"] if "test_split" in rows else rows["n"] * float("nan")
    need = split if want is None else split.clip(upper=want).fillna(want)
    covered = rows["n"] >= need                      # False where need is unknown (NaN)
    if need.isna().any() and read_config(run_dir).get("test_size") is None:
        covered |= need.isna()                       # certified when the config asked for all
    return bool(covered.all())


def parts_folder(run_dir, filename: str = CERTIFICATION) -> Path:
    """Where a certification into ``filename`` keeps its finished chunks: ``<stem>.parts/``."""
    return Path(run_dir) / (Path(filename).stem + PARTS)


class Parts:
    """A certification saved chunk by chunk, so that a killed one resumes where it stopped and
    several processes can share it: :func:`parts_folder` holds ``plan.json`` (what is certified:
    the model's fingerprint, its config, the dataset's sha256, the patch shapes, the test images,
    the chunk size) and one ``<start>-<stop>.csv`` per finished chunk of test images, whose
    ``.json`` names the plan's sha256. Opening it with another plan discards the old chunks
    (``discarded`` says how many); the process that does so holds the run's :func:`lock`.

    A chunk is certified under its claim (:meth:`claim`: ``flock`` on ``<start>-<stop>.claim``,
    freed by the OS when its holder dies), so a process that joins a certification
    (:meth:`join`) takes the chunks nobody holds, and a chunk saved under another plan (by a
    process that outlived its certification) is never counted as done."""

    def __init__(self, run_dir, filename: str, plan: dict, *, discard: bool = True):
        self.folder = parts_folder(run_dir, filename)
        self.plan = json.loads(json.dumps(plan, default=str))   # as it reads back from plan.json
        self.digest = hashlib.sha256(json.dumps(self.plan, sort_keys=True).encode()).hexdigest()
        self.discarded = 0
        self.owner = discard            # a process that joined never creates the folder or plan
        if discard and self.folder.is_dir():
            try:
                old = read_json(self.folder / PLAN)       # {} when missing
            except RunFolderError:
                old = None
            if old != self.plan:
                self.discarded = len(list(self.folder.glob("*-*.csv")))
                self.remove()

    @classmethod
    def join(cls, run_dir, filename: str = CERTIFICATION) -> "Parts | None":
        """The certification under way in ``run_dir`` (its plan as saved), to certify chunks of
        beside its owner; None when there is none. Never discards anything."""
        folder = parts_folder(run_dir, filename)
        plan = read_json(folder / PLAN, default=None) if (folder / PLAN).is_file() else None
        return cls(run_dir, filename, plan, discard=False) if plan else None

    def start(self) -> None:
        """Write ``plan.json`` now, so that others can join before the first chunk is saved."""
        self.folder.mkdir(exist_ok=True)
        if read_json(self.folder / PLAN, default={}) != self.plan:
            write_json(self.folder / PLAN, self.plan)

    def current(self) -> bool:
        """Whether the folder still holds this plan (a new certification replaces it)."""
        try:
            return read_json(self.folder / PLAN, default=None) == self.plan
        except RunFolderError:
            return False

    def _path(self, start: int, stop: int) -> Path:
        return self.folder / f"{int(start)}-{int(stop)}.csv"

    def done(self, start: int, stop: int) -> bool:
        """Whether the chunk of test images ``start`` … ``stop`` − 1 is saved under this plan
        (a chunk saved before chunks named their plan counts: its folder's plan is this one)."""
        path = self._path(start, stop)
        if not path.is_file():
            return False
        try:
            return read_json(path.with_suffix(".json")).get(PLAN_KEY, self.digest) == self.digest
        except RunFolderError:
            return False

    @contextlib.contextmanager
    def claim(self, start: int, stop: int, wait: bool = False):
        """Hold the chunk ``start`` … ``stop`` − 1 while certifying it: yields True, or False
        when another process holds it (``wait``: block until it lets go). Without ``flock``
        (Windows) every claim succeeds."""
        try:
            import fcntl
        except ImportError:
            yield True
            return
        if self.owner:
            self.folder.mkdir(exist_ok=True)
        fd = os.open(self._path(start, stop).with_suffix(".claim"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)                                   # releases the flock

    def save(self, start: int, stop: int, rows) -> None:
        """Keep one chunk's rows (a DataFrame) and their ``attrs`` with the plan's sha256
        (``<start>-<stop>.json``, written first: the CSV marks the chunk done). RunFolderError
        when the folder now holds another plan (a process that joined a certification which
        was since replaced saves nothing)."""
        if self.owner and not (self.folder / PLAN).is_file():
            self.start()
        if not self.current():
            raise RunFolderError(f"{self.folder}: another certification replaced the one this chunk "
                                 f"({start}-{stop}) belongs to; it is not saved")
        path = self._path(start, stop)
        write(path.with_suffix(".json"), json.dumps({**rows.attrs, PLAN_KEY: self.digest},
                                                    default=_plain))
        write_csv(path, rows)

    def rows(self, start: int, stop: int):
        """The saved rows of one chunk, with their ``attrs``."""
        path = self._path(start, stop)
        df = read_csv(path, dtype={"condition": str})
        attrs = read_json(path.with_suffix(".json"))
        attrs.pop(PLAN_KEY, None)
        df.attrs.update(attrs)
        return df

    def remove(self) -> None:
        """Delete the folder (after its chunks were merged, or when they belong to another plan)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _plain(x):
    """A number JSON can hold (numpy scalars in a DataFrame's attrs)."""
    return x.item() if hasattr(x, "item") else str(x)


def certifying_config(cfg: TrainConfig) -> dict:
    """The config fields that decide a certification: all but where and how fast it runs
    (:data:`RESUME_MAY_CHANGE`)."""
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_MAY_CHANGE}


def certification_progress(run_dir, filename: str = CERTIFICATION) -> tuple[int, int] | None:
    """(test images certified so far, images planned) of a certification in progress in
    ``run_dir`` (its :class:`Parts`); None when there is none."""
    folder = parts_folder(run_dir, filename)
    if not (folder / PLAN).is_file():
        return None
    done = sum(int(b) - int(a) for a, b in (p.stem.split("-") for p in folder.glob("*-*.csv")))
    return done, int(read_json(folder / PLAN).get("n", 0))


def state(run_dir) -> str:
    """``empty`` (no config.yaml), ``training``, ``trained``, ``certified`` or ``attacked``."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        return "empty"
    if not finished(run_dir):
        return "training"
    return "attacked" if step_done(run_dir, "attack") else (
        "certified" if step_done(run_dir, "certify") else "trained")


def shipped(run_dir) -> bool:
    return (Path(run_dir) / WEIGHTS).is_file()


def retrain_dir(run_dir) -> Path:
    """The folder in which ``run_dir`` is trained again: its own name, so the weights' metadata
    and the executed notebooks name the run itself."""
    run_dir = Path(run_dir)
    return run_dir / RETRAIN / run_dir.name


def unshipped(run_dir) -> bool:
    """A finished run with neither ``model.safetensors`` nor a ``checkpoint.pt`` to export it
    from: only training it again gives its weights."""
    run_dir = Path(run_dir)
    return (finished(run_dir) and not (run_dir / WEIGHTS).is_file()
            and not (run_dir / CHECKPOINT).is_file())


def resolve(run_dir, needs=MODEL_FILES, results=None) -> Path:
    """The run folder ``run_dir`` holding one of ``needs``: as given, else relative to the
    repository root or the results folder (so notebooks behave the same whatever folder they
    are started from). FileNotFoundError names every folder it looked in."""
    root = Path(results) if results else results_dir()
    needs = (needs,) if isinstance(needs, str) else tuple(needs)
    places = (Path(run_dir), REPO_ROOT / run_dir, root / run_dir)
    for p in places:
        if any((p / n).is_file() for n in needs):
            return p
    if set(needs) <= set(MODEL_FILES):
        for p in places:
            if (p / CONFIG).is_file():
                profile = read_config(p).get("profile") or "cpu"
                raise FileNotFoundError(
                    f"run {p.name} has no trained weights ({' or '.join(needs)}): it was trained "
                    "before runs shipped their models, and its checkpoint stayed on the machine "
                    "that trained it. Train it again with `python -m bagcert_lib.sweep --profile "
                    f"{profile} --retrain-unshipped`, or use a run that ships {MODEL_FILES[0]} "
                    "(python -m bagcert_lib list)")
    looked = list(dict.fromkeys(str(p.resolve()) for p in places))
    raise FileNotFoundError(f"no {' or '.join(needs)} in run directory {str(run_dir)!r}; looked in "
                            + (", ".join(looked[:-1]) + " and " if len(looked) > 1 else "")
                            + looked[-1])


# --------------------------------------------------------------------------------------------
# The lock
# --------------------------------------------------------------------------------------------

#: Lock tokens this process holds, passed to its children (the notebooks a sweep executes
#: write the run folder the sweep has locked for them).
LOCKS_ENV = "BAGCERT_RUN_LOCKS"

_local = threading.local()       # per thread: lock path -> [depth, holder]
_env_guard = threading.Lock()    # sweep threads add and remove their tokens concurrently


class Holder(NamedTuple):
    """Who holds (or held) a run folder's lock."""
    pid: int
    host: str
    since: str
    purpose: str
    token: str
    previous: "Holder | None" = None     # a holder that died, whose lock this one took over

    def __str__(self) -> str:
        return f"pid {self.pid} on {self.host} ({self.purpose} since {self.since})"


def holder(run_dir) -> Holder | None:
    """The holder named in ``run_dir/.lock`` (None: free or never locked)."""
    try:
        info = json.loads((Path(run_dir) / LOCK).read_text() or "null")
        return Holder(int(info["pid"]), str(info["host"]), str(info["since"]),
                      str(info.get("purpose", "writing")), str(info.get("token", "")))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def busy(run_dir) -> Holder | None:
    """The live holder of ``run_dir``'s lock, or None when nobody holds it (``.lock`` may still
    name a holder that died). Peeks with a shared ``flock`` of a few microseconds."""
    try:
        import fcntl
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return holder(run_dir) or Holder(0, "?", "?", "writing", "")
    finally:
        os.close(fd)
    return None


@contextlib.contextmanager
def lock(run_dir, purpose: str = "writing", *, busy_ok: bool = False):
    """Hold ``run_dir``'s lock while writing it (the folder is created if needed, and removed
    again if nothing but the lock was put in it). Yields the :class:`Holder`.

    A second writer raises :class:`RunLocked` naming the holder (``busy_ok``: yields None
    instead). The same thread may lock again (re-entrant), and so may a child process started
    while it holds the lock (a notebook the sweep executes: ``$BAGCERT_RUN_LOCKS``). The lock is
    ``flock`` on ``.lock``: the OS frees it when its holder dies, and the next writer takes it
    over (``Holder.token`` of the dead one is then replaced), removing the temporary files a
    killed writer left. Without ``flock`` (Windows) there is no lock."""
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    key = str(path.resolve())
    held = _local.__dict__.setdefault("held", {})
    if key in held:                                  # this thread holds it already
        held[key][0] += 1
        try:
            yield held[key][1]
        finally:
            held[key][0] -= 1
        return
    try:
        import fcntl
    except ImportError:
        yield Holder(os.getpid(), socket.gethostname(), _now(), purpose, "")
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = holder(run_dir)
            mine = os.environ.get(LOCKS_ENV, "").split(",")
            if other and other.token and other.token in mine and other.pid != os.getpid():
                yield other                          # the parent that started us holds it
                return
            if busy_ok:
                yield None
                return
            raise RunLocked(f"run folder {run_dir} is locked by {other or 'another process'}: "
                            "it is being written; wait for it to finish or use another run "
                            "folder") from None
        before = holder(run_dir)                     # left by a holder that died
        me = Holder(os.getpid(), socket.gethostname(), _now(), purpose, uuid.uuid4().hex)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me._asdict()).encode(), 0)
        os.fsync(fd)
        if before is not None:
            _remove_temporaries(run_dir)
            me = me._replace(previous=before)
        held[key] = [1, me]
        with _env_guard:
            os.environ[LOCKS_ENV] = ",".join(filter(None, [os.environ.get(LOCKS_ENV), me.token]))
        try:
            yield me
        finally:
            del held[key]
            with _env_guard:
                tokens = [t for t in os.environ.get(LOCKS_ENV, "").split(",") if t and t != me.token]
                os.environ[LOCKS_ENV] = ",".join(tokens)
            os.ftruncate(fd, 0)                      # free: a reader sees no holder
            if created and [p.name for p in run_dir.iterdir()] == [LOCK]:
                path.unlink()                        # nothing was written: leave no folder
                run_dir.rmdir()
    finally:
        os.close(fd)                                 # releases the flock


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def _remove_temporaries(run_dir: Path) -> None:
    for p in run_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
