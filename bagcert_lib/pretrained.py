"""Shipped models: a run's trained weights as safetensors beside its ``config.yaml``.

    model, cfg = bagcert_lib.load_pretrained("cpu-rf7-m0.5-heaviside-s0-seed0")   # name or folder
    python -m bagcert_lib export results/runs/<run>          # checkpoint.pt → model.safetensors

``model.safetensors`` holds tensors only (the model's state dict in float32) and a few strings of
metadata; loading it never unpickles anything, so a model downloaded from a stranger cannot run
code. The resume checkpoint (``checkpoint.pt``: optimizer and history too) stays out of git. The
files themselves are read and written by :mod:`.rundir`.
"""
from __future__ import annotations

from pathlib import Path

from . import rundir
from .rundir import WEIGHTS, NotSafetensorsError, read_weights, save_weights  # noqa: F401 (API)


def find_run(run) -> Path:
    """A run directory holding model.safetensors: a folder, or a run name under the results
    folder ($BAGCERT_RESULTS, else results/runs) or the repository."""
    return rundir.resolve(run, needs=WEIGHTS)


def load_pretrained(run, device=None):
    """The shipped model of ``run`` (a run name or folder) in eval mode, and its TrainConfig.

    Reads ``model.safetensors`` and ``config.yaml`` only and never unpickles. The config is
    validated (known fields, right types, finite numbers) and the weights must fit the model it
    describes: the same tensor names and shapes, floating tensors where the model has them. A
    file that fails raises :class:`~bagcert_lib.rundir.RunFolderError` naming it. Example::

        from bagcert_lib import certify, load_pretrained, region_scores

        model, cfg = load_pretrained("scaling-w16-e6-rf7-m0.5-heaviside-s0-seed0")
        model.receptive_field, cfg.margin               # (7, 0.5)
        s = region_scores(model, images, cfg.head)      # images: (N, 3, 32, 32) in [0, 1]
        cert = certify(s, labels, patch=(5, 5), rf=model.receptive_field, stride=model.stride)
        cert.certified                                  # Condition 3.2 holds for a 5 × 5 patch
    """
    from .methods import method_for
    from .train import build_model

    run_dir = find_run(run)
    cfg = rundir.load_config(run_dir)
    state, _ = read_weights(run_dir / WEIGHTS)
    key = method_for(cfg).classifier_key
    if key not in state:
        raise rundir.RunFolderError(f"{run_dir / WEIGHTS}: has no tensor {key!r}: not the weights "
                                    f"of a {cfg.method} model")
    model = build_model(cfg, num_classes=state[key].shape[0])
    rundir.check_weights(state, model.state_dict(), run_dir / WEIGHTS)
    model.load_state_dict(state)
    return model.to(device or "cpu").eval(), cfg


def load_run(run_dir, device=None):
    """The trained model and config of a run directory: its shipped ``model.safetensors`` when
    present (never unpickles), else its resume checkpoint (``weights_only=True``)."""
    from .train import load_checkpoint_model

    if (Path(run_dir) / WEIGHTS).is_file():
        return load_pretrained(Path(run_dir), device)
    return load_checkpoint_model(run_dir, device)


def export_run(run_dir) -> Path:
    """Write ``model.safetensors`` of a run from its resume checkpoint (weights only), holding
    the run folder's lock; refused for a checkpoint written mid-epoch, whose weights no epoch's
    numbers describe."""
    from .train import CHECKPOINT, checkpoint_position, load_checkpoint_model

    run_dir = Path(run_dir)
    with rundir.lock(run_dir, "export"):
        at = checkpoint_position(run_dir)
        if at.step:
            raise ValueError(f"{run_dir / CHECKPOINT} was written {at.step} steps into epoch "
                             f"{at.epochs_done + 1}; resume the run to the end of an epoch before exporting")
        model, cfg = load_checkpoint_model(run_dir)
        commit = rundir.read_json(run_dir / rundir.PROVENANCE).get("git", {}).get("commit")
        return save_weights(model, cfg, run_dir / WEIGHTS, run=run_dir.name, source=CHECKPOINT,
                            git_commit=commit)
