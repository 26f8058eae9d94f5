"""Trainer (App. A.1 recipe), profiles, resuming, and errors raised before any training starts."""
import json

import pandas as pd
import pytest
import torch

from bagcert_lib import data as data_mod
from bagcert_lib.config import grids, profile_config
from bagcert_lib.pretrained import load_run
from bagcert_lib.train import CHECKPOINT, train


def test_profiles_and_grids():
    paper = profile_config("paper")
    assert (paper.width, paper.epochs, paper.batch_size, paper.lr, paper.warmup_epochs,
            paper.sigma, paper.augment) == (768, 350, 96, 1e-3, 10, 0.0, True)
    g = grids()
    assert g["receptive_fields"] == [5, 7, 9, 11, 13]
    assert g["margins"] == [0.25, 0.5, 0.75, 1.0]
    assert all(h * w == 24 for h, w in g["aspect_ratio_patches"])
    assert len(g["figure8"]["seeds"]) == 5


def test_auto_profile_prints_choice(capsys, monkeypatch):
    monkeypatch.delenv("BAGCERT_PROFILE", raising=False)
    cfg = profile_config("auto")
    expected = "paper" if torch.cuda.is_available() else "cpu"
    assert cfg.profile == expected and expected in capsys.readouterr().out


@pytest.mark.parametrize("overrides,match", [
    (dict(rf=6), "receptive field"), (dict(margin=-0.5), "margin"), (dict(head="relu"), "head"),
    (dict(width=0), "width"), (dict(bogus=1), "unknown config"),
])
def test_bad_parameters_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        profile_config("smoke", **overrides)


def test_auto_profile_honours_environment(monkeypatch):
    monkeypatch.setenv("BAGCERT_PROFILE", "smoke")
    assert profile_config("auto").profile == "smoke"


def test_unknown_profile():
    with pytest.raises(ValueError, match="unknown profile"):
        profile_config("laptop")


def test_missing_data_raises_before_training(tmp_path):
    cfg = profile_config("smoke", data=str(tmp_path / "nowhere"))
    with pytest.raises(data_mod.DataNotFoundError, match="nowhere"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_corrupt_data_raises_before_training(tmp_path):
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball" * 100)
    cfg = profile_config("smoke", data=str(tmp_path))
    with pytest.raises(data_mod.DataCorruptError):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_patch_larger_than_image_raises_before_training(tmp_path, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, eval_patch=40)
    with pytest.raises(ValueError, match="larger than the image"):
        train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def _history(run_dir):
    return pd.read_csv(run_dir / "history.csv").drop(columns=["train_s", "epoch_s", "images_per_s"])


def test_resume_equals_uninterrupted_run(tmp_path, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=3,
                         train_size=None, eval_size=60)
    full = train(cfg, tmp_path / "full", progress=False)
    part = train(cfg, tmp_path / "part", progress=False, stop_after=1)
    assert not part["finished"] and len(part["history"]) == 1
    rest = train(cfg, tmp_path / "part", progress=False)
    assert rest["finished"]
    a, b = full["model"].state_dict(), rest["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(_history(tmp_path / "full"), _history(tmp_path / "part"))
    segments = json.loads((tmp_path / "part" / "provenance.json").read_text())["segments"]
    assert [s["from_epoch"] for s in segments] == [1, 2]   # who trained which epochs
    assert all(s["git"] and s["device"] for s in segments)
    prov = json.loads((tmp_path / "part" / "provenance.json").read_text())
    for key in ("git", "torch", "device", "dataset", "wall_s", "seconds_per_epoch"):
        assert key in prov
    assert prov["dataset"]["sha256"] and prov["epochs_done"] == 3
    model, loaded_cfg = load_run(tmp_path / "part")
    assert loaded_cfg == cfg and model.receptive_field == 5


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path, colour_folder):
    """A run killed between epochs' ends resumes from its last mid-epoch checkpoint (step, RNG,
    loss sum) and ends bit for bit where the uninterrupted run does, loss history included."""
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=2,
                         train_size=None, eval_size=30)
    full = train(cfg, tmp_path / "full", progress=False)
    steps = cfg.train_size // cfg.batch_size    # 256 // 32: 8 steps an epoch
    cfg.checkpoint_minutes = 1e-9               # a checkpoint after every step
    part = tmp_path / "part"
    for stop in (4, steps):                     # killed 4 steps into epoch 1, then 4 into epoch 2
        out = train(cfg, part, progress=False, stop_after_steps=stop)
        assert not out["finished"]
        ck = torch.load(part / CHECKPOINT, weights_only=True)
        assert (ck["epoch"], ck["step"]) == ((-1, 4) if stop == 4 else (0, 4))
    rest = train(cfg, part, progress=False)
    assert rest["finished"]
    a, b = full["model"].state_dict(), rest["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    pd.testing.assert_frame_equal(_history(tmp_path / "full"), _history(part))
    segments = json.loads((part / "provenance.json").read_text())["segments"]
    assert [(s["from_epoch"], s.get("from_step")) for s in segments] == [(1, None), (1, 5), (2, 5)]
    assert "step" not in torch.load(part / CHECKPOINT, weights_only=True)   # ended at an epoch end


def test_checkpoint_minutes_must_not_be_negative():
    with pytest.raises(ValueError, match="checkpoint_minutes"):
        profile_config("smoke", checkpoint_minutes=-1).validate()


def test_segments_record_cpu_class_and_precision(tmp_path, colour_folder):
    """Each (re)start records what sets its speed; segments older than that take it from the
    run's last provenance.json, and the study names a run resumed on another CPU class 'mixed'."""
    from bagcert_lib.runtime import cpu_class
    from bagcert_lib.scaling import run_cpu_class
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=2,
                         train_size=None, eval_size=30)
    run = tmp_path / "run"
    train(cfg, run, progress=False, stop_after=1)
    ck = torch.load(run / CHECKPOINT, weights_only=True)        # as written before this existed
    for seg in ck["segments"]:
        for key in ("cpu_class", "cpu", "amp_bf16", "channels_last"):
            seg.pop(key)
    torch.save(ck, run / CHECKPOINT)
    prov = json.loads((run / "provenance.json").read_text())
    bf16_cpu = {"model": "elsewhere", "avx2": True, "avx512f": True, "avx512_bf16": True,
                "amx_bf16": False, "amx_tile": False}
    prov.update(cpu=bf16_cpu, amp_bf16=True, channels_last=True)
    (run / "provenance.json").write_text(json.dumps(prov))
    train(cfg, run, progress=False)
    prov = json.loads((run / "provenance.json").read_text())
    old, new = prov["segments"]
    assert old["cpu_class"] == "avx512-bf16" and old["amp_bf16"] and old["precision_from"]
    assert new["cpu_class"] == cpu_class() and "precision_from" not in new
    assert isinstance(new["amp_bf16"], bool) and isinstance(new["channels_last"], bool)
    here = cpu_class()
    assert run_cpu_class(prov) == (here if here == "avx512-bf16" else f"mixed: avx512-bf16, {here}")
    assert run_cpu_class({"cpu": bf16_cpu, "segments": [{"from_epoch": 1}]}) == "avx512-bf16"
    assert run_cpu_class({}) is None


def test_git_commit_is_dirty_only_when_code_differs(tmp_path):
    """Result files written by other runs do not make a run's code 'dirty'; edited code does."""
    import subprocess
    from bagcert_lib.train import git_commit

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path,
                       check=True, capture_output=True)
    (tmp_path / "results").mkdir()
    (tmp_path / "code.py").write_text("a = 1\n")
    (tmp_path / "results" / "metrics.json").write_text("{}")
    git("init", "-q"), git("add", "."), git("commit", "-qm", "x")
    clean = git_commit(tmp_path)
    assert clean["commit"] and clean["dirty"] is False
    (tmp_path / "results" / "metrics.json").write_text('{"epoch": 2}')
    assert git_commit(tmp_path)["dirty"] is False
    (tmp_path / "code.py").write_text("a = 2\n")
    assert git_commit(tmp_path)["dirty"] is True


def test_a_copy_without_git_names_its_commit_from_the_environment(tmp_path, monkeypatch):
    """A copy of the tree without .git (a GPU machine, a cluster's staging copy): the commit
    comes from $BAGCERT_GIT_COMMIT, and whether the copy was dirty is unknown, not False."""
    from bagcert_lib.train import git_commit

    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))    # no repository above it
    monkeypatch.delenv("BAGCERT_GIT_COMMIT", raising=False)
    assert git_commit(tmp_path) == {"commit": None, "dirty": None}
    monkeypatch.setenv("BAGCERT_GIT_COMMIT", "f1d0831")
    assert git_commit(tmp_path) == {"commit": "f1d0831", "dirty": None, "from": "BAGCERT_GIT_COMMIT"}


def test_resume_refuses_a_different_config(tmp_path, colour_folder):
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=1,
                         train_size=None, eval_size=30)
    train(cfg, tmp_path / "run", progress=False)
    cfg.margin = 0.25
    with pytest.raises(ValueError, match=r"different configuration \(margin 0.5 → 0.25\)"):
        train(cfg, tmp_path / "run", progress=False)


def test_resume_may_move_device(tmp_path, colour_folder):
    """Where a run continues (device) is not part of what it is: resuming on another device works."""
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=2,
                         train_size=None, eval_size=30)
    train(cfg, tmp_path / "run", progress=False, stop_after=1)
    cfg.device = "cpu"
    out = train(cfg, tmp_path / "run", progress=False)
    assert out["finished"] and len(out["history"]) == 2


def test_smoke_profile_on_cifar(tmp_path):
    """The smoke profile trains on the real CIFAR-10 data (skipped when no copy is found)."""
    try:
        data_mod.load_cifar10(progress=False)
    except data_mod.DataNotFoundError as e:
        pytest.skip(f"no CIFAR-10 here: {e}")
    out = train(profile_config("smoke"), tmp_path / "run", progress=False)
    h = out["history"]
    assert out["finished"] and len(h) == 2 and h.loss.notna().all()
    assert ((h.certified_accuracy <= h.clean_accuracy) & (h.certified_global_accuracy <= h.certified_accuracy)).all()


@pytest.mark.subprocess(timeout=400)      # a native crash here fails this test only
@pytest.mark.parametrize("method", ["ds-block", "ds-column"])
def test_smoothing_run_trains_resumes_and_certifies(tmp_path, colour_folder, method):
    """A Derandomized Smoothing base classifier goes through the same trainer, resumes exactly
    (here mid-epoch: its random ablations come from the RNG state in the checkpoint), and is
    certified by DS's vote-count certificate (condition 'DS') in certification.csv, a column
    model also by Mask-DS."""
    from bagcert_lib.runs import certify_run
    from bagcert_lib.smoothing import CifarResNet18

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), method=method,
                         epochs=2, eval_size=12, test_size=12)
    assert cfg.width == 4 and cfg.run_name().startswith(f"smoke-{method}4-theta0.3")
    full = train(cfg, tmp_path / "full", progress=False)
    cfg.checkpoint_minutes = 1e-9
    train(cfg, tmp_path / "part", progress=False, stop_after_steps=3)
    assert torch.load(tmp_path / "part" / CHECKPOINT, weights_only=True)["step"] == 3
    rest = train(cfg, tmp_path / "part", progress=False)
    a, b = full["model"].state_dict(), rest["model"].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    cfg.checkpoint_minutes = 10.0
    h = full["history"]
    assert h.certified_accuracy.notna().all() and h.certified_global_accuracy.isna().all()
    model, loaded = load_run(tmp_path / "full")
    assert isinstance(model, CifarResNet18) and loaded == cfg
    df = certify_run(tmp_path / "full", patches=[(1, 1), (5, 5)], progress=False)
    # a column model is also certified by robust masking on its column ablations (Mask-DS)
    assert df.condition.tolist() == ["DS", "DS"] + (["Mask-DS"] * 2 if method == "ds-column" else [])
    assert (df.n == 12).all()
    assert (df.certified_accuracy <= df.clean_accuracy).all()
    prov = json.loads((tmp_path / "full" / "provenance.json").read_text())
    assert prov["receptive_field"] is None and prov["parameters"] == sum(p.numel() for p in model.parameters())


def test_smoothing_profile_values():
    block, column = profile_config("cpu", method="ds-block"), profile_config("cpu", method="ds-column")
    assert (block.width, block.eval_size, column.width, column.eval_size) == (16, 100, 16, 1000)
    assert block.test_size is column.test_size is None         # both certified on the whole test set
    assert profile_config("paper", method="ds-block").width == 64     # DS's ResNet-18
    with pytest.raises(ValueError, match="unknown method"):
        profile_config("smoke", method="ds-ring")
    with pytest.raises(ValueError, match="theta"):
        profile_config("smoke", method="ds-block", theta=1.5)
