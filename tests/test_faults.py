"""Faults and bad input, tried as a careful user would: kill -9 at points of training,
certification, the attack and export (in child processes, at the write points of
``rundir.fault_point``), two writers at once, a planted pickle payload, and each bad input the
command line must answer with one line and exit 2. Afterwards nothing is lost, nothing ran, and
every run folder loads.

Training here is the smoke profile on a 96-image folder (width 8, RF 5, 2 epochs): seconds."""
import json
import os
import pickle
import re
import shutil
import socket
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from bagcert_lib import data as D
from bagcert_lib import rundir
from bagcert_lib.__main__ import main
from bagcert_lib.config import REPO_ROOT

NAME = "tiny"


def cli(*args, kill=None, timeout=240):
    """``python -m bagcert_lib *args`` in a child process (``kill``: $BAGCERT_KILL)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    env.pop("BAGCERT_KILL", None)
    env.pop(rundir.LOCKS_ENV, None)
    if kill:
        env["BAGCERT_KILL"] = kill
    return subprocess.run([sys.executable, "-m", "bagcert_lib", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)


def train_args(data, out, *extra):
    return ["train", "--profile", "smoke", "--dataset", "imagefolder", "--data", data, "--rf", 5,
            "--train-size", 96, "--eval-size", 12, "--test-size", 24, "--out", out, "--name", NAME,
            "--no-certify", *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, colour_folder):
    """An uninterrupted run (in a child process, as the faulted ones) and its certification."""
    out = tmp_path_factory.mktemp("reference")
    proc = cli(*train_args(colour_folder, out))
    assert proc.returncode == 0, proc.stderr
    run = out / NAME
    proc = cli("certify", run, "--patches", 3, 5)
    assert proc.returncode == 0, proc.stderr
    return run


def weights(run):
    return rundir.read_weights(run / rundir.WEIGHTS)[0]


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def loads(run):
    """Every file of a run folder reads (what the book and the CLI read)."""
    from bagcert_lib.results import load_certification, load_history, load_runs

    rundir.load_config(run)
    for f in ("metrics.json", "provenance.json", "attack.json"):
        rundir.read_json(run / f)
    if (run / rundir.WEIGHTS).is_file():
        weights(run)
    if (run / rundir.CHECKPOINT).is_file():
        rundir.load_checkpoint(run / rundir.CHECKPOINT)
    load_runs(run.parent), load_certification(run.parent), load_history(run.parent)


def snapshot(run):
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def copy_run(reference, tmp_path):
    dest = tmp_path / "runs" / NAME
    shutil.copytree(reference, dest, ignore=shutil.ignore_patterns(".lock"))
    return dest


# ---------------------------------------------------------------------------------------------
# kill -9 during training
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kill", [
    "renamed:checkpoint.pt:2",     # the last epoch's checkpoint in place, no weights or records
    "written:checkpoint.pt:1",     # the first checkpoint complete but not yet renamed
    "written:metrics.json:1",      # epoch 1 written except its metrics.json
    "renamed:model.safetensors:2",  # the last epoch's weights in place, its records not
])
def test_a_training_killed_anywhere_ends_as_the_uninterrupted_run(kill, tmp_path, colour_folder,
                                                                  reference):
    out = tmp_path / "runs"
    first = cli(*train_args(colour_folder, out), kill=kill)
    assert first.returncode == -9, first.stderr
    run = out / NAME
    loads(run)                                          # every file there reads
    assert not rundir.finished(run)
    again = cli(*train_args(colour_folder, out))
    assert again.returncode == 0, again.stderr
    if kill == "renamed:checkpoint.pt:2":               # completed, not "resumed" at 2/2
        assert "completing" in again.stdout and "writing its weights and records" in again.stdout
        assert "took over the lock of pid" in again.stdout
    assert rundir.finished(run) and rundir.epochs_done(run) == 2
    assert same_weights(run, reference)                 # bit for bit
    cols = ["epoch", "loss", "lr", "clean_accuracy", "certified_accuracy"]
    pd.testing.assert_frame_equal(rundir.read_csv(run / "history.csv")[cols],
                                  rundir.read_csv(reference / "history.csv")[cols])
    assert not list(run.glob(".*.tmp"))
    loads(run)


# ---------------------------------------------------------------------------------------------
# kill -9 during certification, the attack and export
# ---------------------------------------------------------------------------------------------

def test_a_certification_killed_while_writing_loses_no_row(tmp_path, reference):
    run = copy_run(reference, tmp_path)
    before = (run / "certification.csv").read_bytes()
    assert before.count(b"\n") == 5                    # header, 3x3 and 5x5 under 3.2 and 3.3
    killed = cli("certify", run, "--patches", 4, kill="written:certification.csv:1")
    assert killed.returncode == -9
    assert (run / "certification.csv").read_bytes() == before
    loads(run)
    again = cli("certify", run, "--patches", 4)
    assert again.returncode == 0, again.stderr
    rows = rundir.read_csv(run / "certification.csv")
    assert list(rows.patch) == ["3x3", "3x3", "5x5", "5x5", "4x4", "4x4"]
    assert not list(run.glob(".*.tmp"))


def test_an_attack_killed_before_its_summary_is_not_done(tmp_path, reference):
    run = copy_run(reference, tmp_path)
    code = (f"from bagcert_lib.runs import attack_run; "
            f"attack_run({str(run)!r}, n=24, steps=2, batch_size=12, progress=False)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAGCERT_KILL": "written:attack.json:1"}
    env.pop(rundir.LOCKS_ENV, None)
    killed = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=240)
    assert killed.returncode == -9, killed.stderr
    assert rundir.state(run) == "certified" and not (run / "attack.json").exists()
    loads(run)
    env.pop("BAGCERT_KILL")
    again = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr
    attack = rundir.read_json(run / "attack.json")
    assert rundir.state(run) == "attacked" and attack["n"] == 24 and attack["certified_broken"] == 0
    assert len(rundir.read_csv(run / "attack_samples.csv")) == 24
    loads(run)


def test_an_export_killed_while_writing_leaves_no_half_file(tmp_path, reference):
    run = copy_run(reference, tmp_path)
    (run / rundir.WEIGHTS).unlink()
    killed = cli("export", run, kill="written:model.safetensors:1")
    assert killed.returncode == -9
    assert not (run / rundir.WEIGHTS).exists()
    again = cli("export", run)
    assert again.returncode == 0, again.stderr
    assert same_weights(run, reference) and not list(run.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------
# Two writers
# ---------------------------------------------------------------------------------------------

def test_a_run_being_written_is_refused_with_its_holder(tmp_path, colour_folder, reference):
    run = copy_run(reference, tmp_path)
    before = snapshot(run)
    with rundir.lock(run, "training"):
        for args in (train_args(colour_folder, run.parent), ["certify", run, "--patches", 4],
                     ["export", run]):
            proc = cli(*args)
            assert proc.returncode == 2, (args, proc.stderr)
            assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
            assert (f"is locked by pid {os.getpid()} on {socket.gethostname()} (training since"
                    in proc.stderr)
    assert snapshot(run) == before


def test_two_trainings_at_once_end_with_one_run(tmp_path, colour_folder, reference):
    """Started together: one trains, the other is refused (or, if it comes after the first has
    finished, finds the run finished and leaves it). Never a collision."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(rundir.LOCKS_ENV, None)
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bagcert_lib", *map(str, train_args(colour_folder, out))]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, cwd=REPO_ROOT) for _ in range(2)]
    results = [(p.wait(240), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for code, stdout, stderr in results:
        if code == 2:
            assert "is locked by pid" in stderr and stderr.count("\n") == 1
        elif "left as it is" not in stdout:
            assert "epoch" in stdout
    assert same_weights(out / NAME, reference)
    loads(out / NAME)


# ---------------------------------------------------------------------------------------------
# Finished work is never overwritten
# ---------------------------------------------------------------------------------------------

def test_training_a_finished_run_leaves_it_untouched(tmp_path, colour_folder, reference, capsys):
    run = copy_run(reference, tmp_path)
    before = snapshot(run)
    main([str(a) for a in train_args(colour_folder, run.parent)])
    assert "is finished (certified, 2/2 epochs): left as it is" in capsys.readouterr().out
    assert snapshot(run) == before
    (run / rundir.CHECKPOINT).unlink()              # shipped: weights, no checkpoint
    before = snapshot(run)
    main([str(a) for a in train_args(colour_folder, run.parent)])
    assert "left as it is" in capsys.readouterr().out and snapshot(run) == before


def test_retrain_trains_it_again_on_request(tmp_path, colour_folder, reference):
    """In a child process with one thread, as the reference: bit-for-bit equal weights need the
    same thread count (the test process's may differ)."""
    run = copy_run(reference, tmp_path)
    (run / "history.csv").write_text("epoch\n1\n")       # to see it replaced
    proc = cli(*train_args(colour_folder, run.parent, "--retrain"))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "retraining" in out and "deleted" in out and "certification.csv" in out
    assert rundir.finished(run) and len(rundir.read_csv(run / "history.csv")) == 2
    assert same_weights(run, reference) and not (run / "certification.csv").exists()


def test_weights_without_a_checkpoint_are_not_overwritten(tmp_path, colour_folder, reference, capsys):
    run = copy_run(reference, tmp_path)
    (run / rundir.CHECKPOINT).unlink()
    (run / "metrics.json").write_text(json.dumps({"epoch": 1, "finished": False}))
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in train_args(colour_folder, run.parent)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "holds model.safetensors but no checkpoint.pt to resume from" in err
    assert snapshot(run) == before


def test_another_configuration_under_the_name_is_refused(tmp_path, colour_folder, reference, capsys):
    run = copy_run(reference, tmp_path)
    before = snapshot(run)
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in train_args(colour_folder, run.parent, "--lr", "0.01", "--width", 16)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "holds a run of a different configuration (width 8 → 16; lr 0.003 → 0.01)" in err
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# No input runs code
# ---------------------------------------------------------------------------------------------

class _CreatesAFile:
    """Unpickling this opens (creates) the file ``path``."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant_cifar(root, marker):
    """cifar-10-batches-py/ whose data_batch_1 would create ``marker`` when unpickled."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in D.CIFAR10_FILES:
        content = {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0]}
        if name == "data_batch_1":
            content[b"data"] = _CreatesAFile(marker)
        (folder / name).write_bytes(pickle.dumps(content))
    return folder


def test_a_planted_pickle_in_cifar_runs_nothing(tmp_path, monkeypatch, capsys):
    marker = tmp_path / "pwned"
    folder = _plant_cifar(tmp_path / "data", marker)
    monkeypatch.setenv("BAGCERT_CACHE", str(tmp_path / "cache"))
    # the md5 check refuses it unread, naming the file, the expected and the found hash
    with pytest.raises(D.DataCorruptError) as err:
        D.load_cifar10(folder, progress=False)
    msg = str(err.value)
    found = __import__("hashlib").md5((folder / "batches.meta").read_bytes()).hexdigest()
    assert f"{folder}/batches.meta: md5 {found}, expected {D.cifar.CIFAR10_MD5S['batches.meta']}" in msg
    assert not marker.exists()
    # and were the md5 check passed, the unpickler admits only numpy arrays and containers
    monkeypatch.setattr(D.cifar, "_verify", lambda *a: None)
    with pytest.raises(D.DataCorruptError, match=r"cannot unpickle .*data_batch_1: (io|builtins)\.open "
                                                 r"is not allowed in a CIFAR-10 batch"):
        D.load_cifar10(folder, progress=False)
    assert not marker.exists()
    monkeypatch.undo()
    # the command line: one line naming the file, exit 2, nothing ran
    proc = cli("train", "--profile", "smoke", "--data", folder.parent, "--out", tmp_path / "runs")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "batches.meta: md5" in proc.stderr and not marker.exists()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_planted_archive_is_refused_unread(tmp_path):
    marker = tmp_path / "pwned"
    folder = _plant_cifar(tmp_path / "src", marker)
    archive = tmp_path / "data" / D.CIFAR10_ARCHIVE
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    with pytest.raises(D.DataCorruptError, match=f"{archive}: md5 [0-9a-f]{{32}}, expected {D.CIFAR10_MD5}"):
        D.load_cifar10(archive.parent, progress=False, cache_dir=tmp_path / "cache")
    assert not marker.exists()


def test_a_checkpoint_that_weights_only_refuses_is_one_line(tmp_path, reference):
    run = copy_run(reference, tmp_path)
    marker = tmp_path / "pwned"
    ck = torch.load(run / rundir.CHECKPOINT, weights_only=True)
    torch.save({**ck, "history": _CreatesAFile(marker)}, run / rundir.CHECKPOINT)
    (run / rundir.WEIGHTS).unlink()
    for args in (["export", run], ["certify", run, "--patches", 3]):
        proc = cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "checkpoint.pt: cannot be loaded as a resume checkpoint with weights_only=True" in proc.stderr
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# One line and exit 2 for every bad input
# ---------------------------------------------------------------------------------------------

def _one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("text,says", [
    ("rf: [7\n", "config.yaml: is not valid YAML"),
    ("", "config.yaml: is empty"),
    ("- 7\n", "config.yaml: holds a list"),
    ("rf: 5\nwidth: 8\nlearningrate: 1\n", "config.yaml: unknown keys ['learningrate']; allowed:"),
    ("rf: 5\nwidth: eight\n", "config.yaml: width is 'eight' (str); expected int"),
])
def test_a_bad_config_yaml_is_one_line(text, says, tmp_path, reference, capsys):
    from bagcert_lib import load_pretrained

    run = copy_run(reference, tmp_path)
    (run / "config.yaml").write_text(text)
    assert says in _one_line(["certify", run, "--patches", 3], capsys)
    with pytest.raises(rundir.RunFolderError, match=re.escape(says)):
        load_pretrained(run)
    errors = []
    from bagcert_lib.__main__ import list_runs
    list_runs(run.parent, errors=errors)
    assert len(errors) == 1 and says.split(":")[0] in str(errors[0])


def test_list_shows_the_good_runs_and_names_the_bad_one(tmp_path, reference, capsys):
    good = copy_run(reference, tmp_path)
    bad = good.parent / "bad"
    shutil.copytree(good, bad)
    (bad / "metrics.json").write_text("")           # what a kill left before atomic writes
    with pytest.raises(SystemExit) as exit_:
        main(["list", "--results", str(good.parent)])
    captured = capsys.readouterr()
    assert exit_.value.code == 2 and NAME in captured.out and "bad" not in captured.out
    assert captured.err == f"error: run left out: {bad / 'metrics.json'}: is empty (a write that did " \
                           "not finish?); expected a JSON object\n"


def test_bad_weights_and_tables_are_one_line(tmp_path, reference, capsys):
    from safetensors.torch import save_file

    run = copy_run(reference, tmp_path)
    state, meta = rundir.read_weights(run / rundir.WEIGHTS)
    key = next(k for k, v in state.items() if v.is_floating_point())
    save_file({**state, key: state[key].to(torch.int32)}, str(run / rundir.WEIGHTS), metadata=meta)
    err = _one_line(["certify", run, "--patches", 3], capsys)
    assert f"model.safetensors: tensor '{key}' has dtype int32; allowed: a floating type" in err
    shutil.copy(reference / rundir.WEIGHTS, run / rundir.WEIGHTS)
    (run / "certification.csv").write_text("")
    err = _one_line(["certify", run, "--patches", 3], capsys)
    assert f"{run / 'certification.csv'}: is empty" in err and "delete it" in err
    assert (run / "certification.csv").read_text() == ""
    (run / "certification.csv").unlink()
    err = _one_line(["certify", run, "--patches", "40x1"], capsys)
    assert "patch 40x1 (w × h) is larger than the image 32x32; allowed: up to 32 wide and 32 high" in err


def test_permission_and_os_errors_are_one_line(tmp_path, colour_folder, capsys):
    target = "/sys/bagcert-runs" if os.path.isdir("/sys") else "/proc/bagcert-runs"
    err = _one_line(train_args(colour_folder, target), capsys)
    assert "bagcert-runs" in err and ("not permitted" in err or "denied" in err or "No such" in err)
    (tmp_path / "file").write_text("x")
    err = _one_line(train_args(colour_folder, tmp_path / "file"), capsys)
    assert "Not a directory" in err and str(tmp_path / "file") in err


def test_a_diverging_training_saves_nothing_of_its_epoch(tmp_path, colour_folder, monkeypatch, capsys):
    from bagcert_lib.methods import method_for

    method = type(method_for(rundir.TrainConfig()))
    monkeypatch.setattr(method, "loss", lambda self, *a, **k: torch.tensor(float("nan"), requires_grad=True))
    err = _one_line(train_args(colour_folder, tmp_path), capsys)
    assert "diverged in epoch 1" in err and "Lower --lr" in err
    assert not (tmp_path / NAME / rundir.WEIGHTS).exists()


# ---------------------------------------------------------------------------------------------
# Own images
# ---------------------------------------------------------------------------------------------

def test_own_images_of_every_mode_become_the_right_rgb(tmp_path):
    from bagcert_lib.data.folders import load_own_images

    def save(name, img, **kw):
        img.save(tmp_path / name, **kw)
    save("gray16.png", Image.fromarray(np.full((40, 40), 32896, np.uint16)))        # 50 % grey
    save("rgba.png", Image.fromarray(np.full((40, 40, 4), [255, 0, 0, 0], np.uint8), "RGBA"))
    half = np.full((40, 40, 4), [0, 0, 0, 128], np.uint8)
    save("half.png", Image.fromarray(half, "RGBA"))
    pal = Image.new("P", (40, 40))
    pal.putpalette([0, 0, 255] + [0, 255, 0] * 255)
    save("palette.png", pal)
    save("palette_transparent.png", pal, transparency=0)
    save("cmyk.jpg", Image.new("CMYK", (40, 40), (0, 255, 255, 0)), quality=100)
    Image.fromarray(np.full((40, 40, 3), 100, np.uint8)).save(tmp_path / "ok.jpg")
    raw = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "truncated.jpg").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "notes.png").write_bytes(b"not an image")
    own = load_own_images(tmp_path, classes=D.CIFAR10_CLASSES)
    pixel = {n: own.x[i, :, 16, 16].tolist() for i, n in enumerate(own.names)}
    assert pixel == {"cmyk.jpg": [255, 0, 0], "gray16.png": [128, 128, 128], "half.png": [127, 127, 127],
                     "ok.jpg": [100, 100, 100], "palette.png": [0, 0, 255],
                     "palette_transparent.png": [255, 255, 255], "rgba.png": [255, 255, 255]}
    assert own.x.shape == (7, 3, 32, 32) and own.x.dtype == torch.uint8 and (own.labels == -1).all()
    assert [name for name, _ in own.skipped] == ["cat/truncated.jpg", "notes.png"]
    assert all(why for _, why in own.skipped)
