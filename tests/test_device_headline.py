"""scripts/device_headline.sh (issue 13, item 6): the lent-GPU pipeline, run here on a CPU at
smoke scale, so that the first GPU session spends its minutes training and not debugging."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "device_headline.sh"


def _call(mode, out, work, colour_folder, wait=240):
    env = {**os.environ, "OUT": str(out), "WORK": str(work), "PROFILE": "smoke", "DEVICE": "cpu",
           "WAIT": str(wait), "PYTHON": sys.executable, "CUDA_TESTS": "0",
           "TRAIN_ARGS": f"--dataset imagefolder --data {colour_folder} --epochs 1"}
    return subprocess.run(["bash", str(SCRIPT), mode], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=wait + 60)


@pytest.mark.slow
def test_the_device_pipeline_returns_a_whole_run_in_pieces(tmp_path, colour_folder):
    work, out = tmp_path / "work", tmp_path / "out"
    assert _call("wait", out, work, colour_folder).returncode == 2     # nothing started: no waiting
    started = _call("start", out, work, colour_folder, wait=1)        # returns, the run goes on
    assert started.returncode == 0, started.stdout + started.stderr
    assert json.loads((out / "status.json").read_text())["state"] == "running"
    again = _call("start", out, work, colour_folder, wait=1)
    assert again.returncode == 2 and "already runs" in again.stderr   # one pipeline at a time
    assert _call("wait", out, work, colour_folder).returncode == 0
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "finished", (out / "log.txt").read_text()
    parts = sorted(out.glob("run.tar.part-*"))
    assert parts and len(list(out.iterdir())) <= 8                   # what $OUT may return
    whole = tmp_path / "run.tar"
    whole.write_bytes(b"".join(p.read_bytes() for p in parts))
    with tarfile.open(whole) as tar:
        tar.extractall(tmp_path / "back", filter="data")
    run = tmp_path / "back" / status["run"]
    names = {p.name for p in run.iterdir()}
    assert {"model.safetensors", "config.yaml", "certification.csv", "attack.json",
            "provenance.json"} <= names and "checkpoint.pt" not in names
    assert json.loads((run / "attack.json").read_text())["certified_broken"] == 0
