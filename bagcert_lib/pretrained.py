"""Shipped models: a run's trained weights as safetensors beside its ``config.yaml`` (issue 16).

    model, cfg = bagcert_lib.load_pretrained("cpu-rf7-m0.5-heaviside-s0-seed0")   # name or folder
    python -m bagcert_lib export results/runs/<run>          # checkpoint.pt -> model.safetensors

``model.safetensors`` holds tensors only (the model's state dict in float32) and a few strings of
metadata; loading it never unpickles anything, so a model downloaded from a stranger cannot run
code. The resume checkpoint (``checkpoint.pt``: optimizer and history too) stays out of git.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import yaml

from .config import TrainConfig

WEIGHTS = "model.safetensors"


class NotSafetensorsError(ValueError):
    """A weights file that is not a valid safetensors file (e.g. a pickle): refused, never loaded."""


def save_weights(model, cfg: TrainConfig, path, **metadata) -> Path:
    """Write ``model``'s state dict (float32, contiguous) and ``cfg`` as safetensors metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype).contiguous()
             for k, v in model.state_dict().items()}
    meta = {"format": "bagcert", "config": json.dumps(cfg.to_dict()),
            **{k: str(v) for k, v in metadata.items()}}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp), metadata=meta)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)      # safetensors writes 0600; readable like every other result file
    tmp.replace(path)              # atomic: a kill never leaves a half-written file
    return path


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


def find_run(run) -> Path:
    """A run directory holding model.safetensors: a folder, or a run name under the results
    folder ($BAGCERT_RESULTS, else results/runs) or the repository."""
    from .runs import resolve_run_dir

    return resolve_run_dir(run, needs=WEIGHTS)


def load_pretrained(run, device=None):
    """The shipped model of ``run`` (a run name or folder) in eval mode, and its TrainConfig.

    Reads ``model.safetensors`` and ``config.yaml`` only; never unpickles."""
    from .methods import method_for
    from .train import build_model

    run_dir = find_run(run)
    state, _ = read_weights(run_dir / WEIGHTS)
    cfg = TrainConfig(**yaml.safe_load((run_dir / "config.yaml").read_text()))
    model = build_model(cfg, num_classes=state[method_for(cfg).classifier_key].shape[0])
    model.load_state_dict(state)
    return model.to(device or "cpu").eval(), cfg


def export_run(run_dir) -> Path:
    """Write ``model.safetensors`` of a run from its resume checkpoint (weights only); refused
    for a checkpoint written mid-epoch, whose weights no epoch's numbers describe."""
    from .train import CHECKPOINT, checkpoint_position, load_checkpoint_model

    run_dir = Path(run_dir)
    at = checkpoint_position(run_dir)
    if at.step:
        raise ValueError(f"{run_dir / CHECKPOINT} was written {at.step} steps into epoch "
                         f"{at.epochs_done + 1}; resume the run to the end of an epoch before exporting")
    model, cfg = load_checkpoint_model(run_dir)
    prov = run_dir / "provenance.json"
    commit = json.loads(prov.read_text()).get("git", {}).get("commit") if prov.is_file() else None
    return save_weights(model, cfg, run_dir / WEIGHTS, run=run_dir.name, source=CHECKPOINT,
                        git_commit=commit)
