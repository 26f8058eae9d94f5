"""scripts/device.sh, the GPU job script (headline; retrain), run on a CPU at smoke scale, so that
a GPU's time goes to training and not to debugging the script."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device.sh"


def _call(mode, out, work, colour_folder=None, wait=240, **env):
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PROFILE": "smoke", "DEVICE": "cpu",
           "WAIT": str(wait), "PYTHON": sys.executable, "CUDA_TESTS": "0", **env}
    if colour_folder:
        env["TRAIN_ARGS"] = f"--dataset imagefolder --data {colour_folder} --epochs 1"
    mode = mode.split()
    return subprocess.run(["bash", str(SCRIPT), *mode], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=wait + 60)


def _unpack(out, into):
    parts = sorted(out.glob("run.tar.part-*"))
    assert parts and len(list(out.iterdir())) <= 8                   # what $OUT may return
    whole = into.with_suffix(".tar")
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(whole) as tar:
        tar.extractall(into, filter="data")
    return into


@pytest.mark.slow
def test_the_device_pipeline_returns_a_whole_run_in_pieces(tmp_path, colour_folder):
    work, out = tmp_path / "work", tmp_path / "out"
    assert _call("wait", out, work, colour_folder).returncode == 2     # nothing started: no waiting
    assert _call("start nope", out, work, colour_folder).returncode == 2
    started = _call("start headline", out, work, colour_folder, wait=1)   # returns, the run goes on
    assert started.returncode == 0, started.stdout + started.stderr
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    again = _call("start headline", out, work, colour_folder, wait=1)
    assert again.returncode == 2 and "already runs" in again.stderr   # one job at a time
    assert _call("wait", out, work, colour_folder).returncode == 0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished", (out / "log.txt").read_text()
    (listed,) = status["runs"]
    assert listed["finished"] and listed["epochs_done"] == 1
    run = _unpack(out, tmp_path / "back") / listed["run"]
    names = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "config.yaml", "certification.csv", "attack.json",
            "provenance.json"} <= names and "checkpoint.pt" not in names
    assert json.loads((run / "attack.json").read_text())["certified_broken"] == 0


@pytest.mark.slow
def test_the_retrain_job_trains_unshipped_runs_again_and_returns_them(tmp_path):
    """``start retrain``: the sweep (papermill notebooks) trains again each run of the grid
    without weights, and every call returns the runs retrained so far, with previous.json."""
    from test_sweep import _finished_run_without_weights

    from bagcert_lib.sweep import Job

    results, work, out = tmp_path / "runs", tmp_path / "work", tmp_path / "out"
    name = Job(7, 0.5).name("smoke")
    _finished_run_without_weights(results / name)
    env = dict(RESULTS=str(results), GRID="headline", JOBS="1",
               BAGCERT_DATA=os.environ.get("BAGCERT_DATA", str(ROOT.parent / "shared" / "datasets")))
    started = _call("start retrain", out, work, wait=600, **env)
    assert started.returncode == 0, started.stdout + started.stderr
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished", (out / "log.txt").read_text()
    assert [r["run"] for r in status["runs"]] == [name] and status["runs"][0]["finished"]
    run = _unpack(out, tmp_path / "back") / name
    names = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "previous.json", "train.ipynb", "certify.ipynb", "attack.ipynb",
            "attack.json"} <= names and not names & {"checkpoint.pt", ".lock", "retrain"}
    assert json.loads((run / "previous.json").read_text())["commit"] == "7211e83"
    from safetensors import safe_open                     # trained in retrain/<run>/, named <run>
    with safe_open(run / "model.safetensors", "pt") as f:
        assert f.metadata()["run"] == name
    assert json.loads((run / "attack.json").read_text())["certified_broken"] == 0


def test_a_call_that_ends_before_the_retrain_returns_its_checkpoint(tmp_path):
    """``wait`` while a retrain still trains: progress.tar holds the unfinished retrain folders
    touched since ``start`` (checkpoint.pt included), to resume here; older ones stay out."""
    import time

    results, work, out = tmp_path / "runs", tmp_path / "work", tmp_path / "out"
    old = results / "old-run" / "retrain" / "old-run"            # parked before this `start`
    old.mkdir(parents=True)
    (old / "checkpoint.pt").write_bytes(b"old")
    work.mkdir()
    time.sleep(1.1)
    (work / "started").touch()
    (work / "job").write_text(f"retrain\n{results}\n\n")
    new = results / "new-run" / "retrain" / "new-run"
    new.mkdir(parents=True)
    time.sleep(1.1)
    (new / "checkpoint.pt").write_bytes(b"new")
    (new / "history.csv").write_text("epoch\n1\n")
    called = _call("wait", out, work, wait=0)
    assert called.returncode == 0 and "running" in called.stdout, called.stdout + called.stderr
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    with tarfile.open(out / "progress.tar") as tar:
        names = set(tar.getnames())
    assert "./new-run/retrain/new-run/checkpoint.pt" in names and not any("old-run" in n for n in names)
    assert not list(out.glob("run.tar.part-*"))                   # nothing finished yet
