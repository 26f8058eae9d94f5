"""Data-parallel training: 2 gloo processes of one thread each under torchrun, against
the one-process run.

What is equal between a 2-process and a 1-process run of one configuration (fp32, ``sync_bn``):

* exactly: every epoch's global batches (order, augmentation, DS ablations) — rank 0's slice then
  rank 1's is the one-process batch, bit for bit;
* the loss, every parameter gradient and the BatchNorm running statistics of a step (shake-shake
  on: every rank draws the same noise): the loss to 1e-6; each gradient to 1e-6 of its norm with
  a float64 model (the loss itself is computed in fp32, as in training) and to 5e-3 in fp32 (measured: <= 1.5e-3; BatchNorm over 16-32 images amplifies fp32 rounding, whose
  order differs between one all-reduce and one local sum);
* in format: the run directory (the same files, config.yaml equal, the same history.csv columns
  and metrics.json / provenance.json keys; provenance adds world size, backend and devices).

Not equal bit for bit: the weights after many steps (reduction order differs, Adam amplifies it).
A 2-process run resumes with 1 process, and a batch the world size does not divide fails at once.
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bagcert_lib import distributed
from bagcert_lib.config import REPO_ROOT, profile_config
from bagcert_lib.train import train

WORKER = Path(__file__).with_name("dist_worker.py")


def torchrun(args, nproc=2, timeout=150):
    """Run ``torchrun --standalone --nproc_per_node=nproc ARGS``; a hang kills its process group
    and fails the test."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BAGCERT_DIST_TIMEOUT_MIN": "2",
           "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"hung: torchrun {args} gave no result in {timeout} s\n{out[-3000:]}")
    return proc.returncode, out


def _cfg(colour_folder, **kw):
    return profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5,
                          train_size=None, eval_size=30, amp=False, channels_last=False,
                          device="cpu", **kw)


def test_shard_and_batch_check():
    ctx = distributed.Context(rank=1, world_size=2)
    assert torch.equal(distributed.shard(torch.arange(6), ctx), torch.tensor([3, 4, 5]))
    assert distributed.shard(torch.arange(6), distributed.Context()).tolist() == list(range(6))
    with pytest.raises(distributed.WorldSizeError,
                       match="batch_size 97 is not divisible by the world size 2"):
        distributed.check_batch(97, 2)
    assert distributed.setup("cpu") == distributed.Context()     # no torchrun: world size 1


@pytest.mark.timeout(300)
@pytest.mark.parametrize("method", ["bagcert", "ds-column"])
def test_two_processes_see_the_global_batches_and_gradients_of_one(tmp_path, colour_folder, method):
    """Exactly the same global batches per epoch (2 epochs; slices in rank order); the same loss
    and gradients of one step to float tolerance (fp32, SyncBatchNorm, BagCert with shake-shake
    noise on); BatchNorm running statistics after it too."""
    sys.path.insert(0, str(WORKER.parent))
    import dist_worker

    cfg = _cfg(colour_folder, method=method)
    rc, out = torchrun([WORKER, "step", json.dumps(cfg.to_dict()), tmp_path])
    assert rc == 0, out[-4000:]
    ranks = [torch.load(tmp_path / f"order{r}.pt") for r in (0, 1)]
    one = dist_worker.epoch_data(cfg, None)
    for e in (0, 1):
        assert len(one[e]) == len(ranks[0][e]) == 256 // cfg.batch_size      # smoke: 256 images
        for s, (x, y) in enumerate(one[e]):
            assert ranks[0][e][s][0].shape[0] == cfg.batch_size // 2
            assert torch.equal(torch.cat([r[e][s][0] for r in ranks]), x)
            assert torch.equal(torch.cat([r[e][s][1] for r in ranks]), y)
    assert not torch.equal(one[0][0][1], one[1][0][1])            # epochs differ
    steps = torch.load(tmp_path / "step.pt")
    for dtype, tol in (("float64", 1e-6), ("float32", 5e-3)):
        two, ref = steps[dtype], dist_worker.one_step(cfg, distributed.Context(), getattr(torch, dtype))
        torch.testing.assert_close(two["loss"], ref["loss"].detach(), rtol=1e-6, atol=0)
        assert two["grads"].keys() == ref["grads"].keys()
        for k in ref["grads"]:       # relative to the gradient's norm: BN on 16 images is stiff
            err = (two["grads"][k] - ref["grads"][k]).norm() / ref["grads"][k].norm()
            assert err < tol, (dtype, k, float(err))
        for k, b in ref["buffers"].items():
            torch.testing.assert_close(two["buffers"][k], b, rtol=tol, atol=tol, msg=k)


@pytest.mark.timeout(400)
def test_two_process_run_directory_resumes_with_one_process(tmp_path, colour_folder):
    """``torchrun -m bagcert_lib train`` (2 processes, stopped after epoch 1) writes the run
    directory a one-process run writes; one process then resumes it to the end."""
    cfg = _cfg(colour_folder, epochs=2)
    one = train(cfg, tmp_path / "one", progress=False)
    args = ["-m", "bagcert_lib", "train", "--profile", "smoke", "--dataset", "imagefolder",
            "--data", colour_folder, "--rf", "5", "--eval-size", "30", "--amp", "false",
            "--channels-last", "false", "--device", "cpu", "--epochs", "2", "--stop-after", "1",
            "--out", tmp_path, "--name", "two", "--no-certify"]
    rc, out = torchrun(args)
    assert rc == 0, out[-4000:]
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    files = lambda d: sorted(p.name for p in d.iterdir() if p.name != ".lock")   # noqa: E731 (the writer's lock)
    assert files(two_dir) == files(one_dir)
    assert (two_dir / "config.yaml").read_text() == (one_dir / "config.yaml").read_text()
    h1, h2 = pd.read_csv(one_dir / "history.csv"), pd.read_csv(two_dir / "history.csv")
    assert list(h1.columns) == list(h2.columns) and len(h2) == 1
    assert h2.loss[0] == pytest.approx(h1.loss[0], rel=1e-3)     # epoch 1, float tolerance
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (one_dir, two_dir))
    assert m1.keys() == m2.keys() and not m2["finished"]
    p1, p2 = (json.loads((d / "provenance.json").read_text()) for d in (one_dir, two_dir))
    assert p1.keys() == p2.keys()
    assert (p1["world_size"], p1["backend"], len(p1["devices"])) == (1, None, 1)
    assert (p2["world_size"], p2["backend"], len(p2["devices"])) == (2, "gloo", 2)

    rest = train(cfg, two_dir, progress=False)             # resume with one process
    assert rest["finished"] and len(rest["history"]) == 2
    prov = json.loads((two_dir / "provenance.json").read_text())
    assert [(s["from_epoch"], s["world_size"]) for s in prov["segments"]] == [(1, 2), (2, 1)]
    assert json.loads((two_dir / "metrics.json").read_text())["finished"]


@pytest.mark.timeout(200)
def test_batch_not_divisible_by_world_size_fails_clearly(tmp_path, colour_folder):
    rc, out = torchrun(["-m", "bagcert_lib", "train", "--profile", "smoke", "--dataset",
                        "imagefolder", "--data", colour_folder, "--batch-size", "33",
                        "--device", "cpu", "--out", tmp_path])
    assert rc != 0
    assert "error: batch_size 33 is not divisible by the world size 2" in out
    assert not any(tmp_path.iterdir())


@pytest.mark.timeout(200)
def test_a_dead_rank_ends_the_run_instead_of_hanging(tmp_path):
    """Rank 1 exits while rank 0 waits at a barrier: torchrun tears the group down (and the
    process group's timeout, $BAGCERT_DIST_TIMEOUT_MIN, bounds any wait)."""
    cfg = profile_config("smoke", device="cpu")
    rc, out = torchrun([WORKER, "die", json.dumps(cfg.to_dict()), tmp_path], timeout=150)
    assert rc != 0
