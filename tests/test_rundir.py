"""The run folder (``bagcert_lib.rundir``): atomic writes, validated reads that name the file,
its state, and the lock that keeps a second writer out (and is taken over from a dead one)."""
import json
import os
import socket
import subprocess
import sys
import threading

import pandas as pd
import pytest
import torch

from bagcert_lib import rundir
from bagcert_lib.rundir import RunFolderError, RunLocked


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    rundir.write_json(path, {"epoch": 1})
    assert json.loads(path.read_text()) == {"epoch": 1}
    rundir.write_csv(tmp_path / "history.csv", pd.DataFrame({"epoch": [1, 2]}))
    rundir.write_yaml(tmp_path / "config.yaml", {"rf": 7})
    rundir.write_npz(tmp_path / "a.npz", x=torch.arange(3).numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "config.yaml", "history.csv",
                                                          "metrics.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask      # not a temporary file's 0600


def test_a_writer_that_fails_leaves_the_old_file(tmp_path):
    path = tmp_path / "certification.csv"
    path.write_text("patch,condition\n5x5,3.2\n")

    def broken(tmp):
        tmp.write_text("half a fi")
        raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        rundir.write(path, broken)
    assert path.read_text() == "patch,condition\n5x5,3.2\n"
    assert [p.name for p in tmp_path.iterdir()] == ["certification.csv"]


@pytest.mark.parametrize("text,says", [
    ("", "is empty"), ("{", "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_a_bad_json_file_is_named(tmp_path, text, says):
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(RunFolderError, match=f"metrics.json: {says}"):
        rundir.read_json(tmp_path / "metrics.json")
    assert rundir.read_json(tmp_path / "absent.json") == {}


def test_a_bad_csv_file_is_named(tmp_path):
    (tmp_path / "certification.csv").write_text("")
    with pytest.raises(RunFolderError, match=r"certification.csv: is empty .* delete it"):
        rundir.read_csv(tmp_path / "certification.csv")


@pytest.mark.parametrize("text,says", [
    ("rf: [7\n", "is not valid YAML"),
    ("", "is empty"),
    ("- rf\n- 7\n", "holds a list"),
    ("rf: 7\nlearning_rate: 0.1\n", "unknown keys ['learning_rate']; allowed: dataset, data, rf"),
    ("rf: seven\n", "rf is 'seven' (str); expected int"),
    ("margin: .nan\n", "margin is nan (float); expected float (numbers finite)"),
    ("lr: .inf\n", "lr is inf (float)"),
    ("epochs: true\n", "epochs is True (bool)"),
    ("rf: 6\n", "unknown receptive field 6"),
    ("margin: -1\n", "margin M must be positive"),
])
def test_config_yaml_is_validated(tmp_path, text, says):
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(RunFolderError) as err:
        rundir.load_config(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "config.yaml")) and says in str(err.value)


def test_a_valid_config_fills_in_defaults(tmp_path):
    (tmp_path / "config.yaml").write_text("rf: 5\nmargin: 1\nsigma: 0\nprofile: smoke\ntrain_size: null\n")
    assert rundir.read_config(tmp_path) == {"rf": 5, "margin": 1, "sigma": 0, "profile": "smoke",
                                            "train_size": None}
    cfg = rundir.load_config(tmp_path)
    assert (cfg.rf, cfg.width, cfg.head) == (5, 768, "heaviside")
    assert rundir.config_differences({"rf": 5}, {"rf": 7, "device": "cuda"}) == ["rf 5 → 7"]


def test_every_committed_run_folder_loads(committed_runs):
    from bagcert_lib.results import load_certification, load_history, load_runs

    runs = load_runs(committed_runs)
    assert len(runs) and runs["finished"].any()
    for p in runs["path"]:
        rundir.load_config(p)
        assert rundir.state(p) in ("training", "trained", "certified", "attacked")
    assert len(load_certification(committed_runs)) and len(load_history(committed_runs))


def test_state_follows_the_steps(tmp_path):
    assert rundir.state(tmp_path) == "empty"
    (tmp_path / "config.yaml").write_text("rf: 7\n")
    assert rundir.state(tmp_path) == "training"
    rundir.write_json(tmp_path / "metrics.json", {"epoch": 2, "finished": True})
    assert rundir.state(tmp_path) == "trained" and rundir.epochs_done(tmp_path) == 2
    (tmp_path / "certification.csv").write_text("patch,condition\n")
    assert rundir.state(tmp_path) == "certified"
    rundir.write_json(tmp_path / "attack.json", {})
    assert rundir.state(tmp_path) == "attacked" and rundir.unshipped(tmp_path)


def test_weights_must_be_floating_finite_and_fit(tmp_path):
    from bagcert_lib.model import cifar_scorer

    model = cifar_scorer(rf=5, width=8)
    expected = model.state_dict()
    rundir.check_weights(dict(expected), expected, "w")
    key = next(k for k, v in expected.items() if v.is_floating_point())
    bad = {**expected, key: expected[key].to(torch.int64)}
    with pytest.raises(RunFolderError, match=rf"w: tensor '{key}' has dtype int64; allowed: a floating"):
        rundir.check_weights(bad, expected, "w")
    nan = {**expected, key: torch.full_like(expected[key], float("nan"))}
    with pytest.raises(RunFolderError, match="NaN or infinite"):
        rundir.check_weights(nan, expected, "w")
    wrong = {**expected, key: torch.zeros(1)}
    with pytest.raises(RunFolderError, match="has shape"):
        rundir.check_weights(wrong, expected, "w")


def test_a_second_writer_is_refused_with_the_holder(tmp_path):
    run = tmp_path / "run"
    held, release = threading.Event(), threading.Event()

    def writer():
        with rundir.lock(run, "training"):
            held.set()
            release.wait(60)
    t = threading.Thread(target=writer)
    t.start()
    held.wait(60)
    try:
        with pytest.raises(RunLocked) as err:
            with rundir.lock(run, "certification"):
                pass
        msg = str(err.value)
        assert f"locked by pid {os.getpid()} on {socket.gethostname()} (training since" in msg
        assert "\n" not in msg
        with rundir.lock(run, busy_ok=True) as me:
            assert me is None
    finally:
        release.set()
        t.join()
    with rundir.lock(run) as me:                    # free again; the same thread may nest
        with rundir.lock(run) as again:
            assert again == me
    assert rundir.holder(run) is None               # released: nobody named


def test_a_lock_taken_just_to_look_leaves_no_folder(tmp_path):
    with rundir.lock(tmp_path / "new"):
        pass
    assert not (tmp_path / "new").exists()


CHILD = """
import sys, time
from bagcert_lib import rundir
with rundir.lock(sys.argv[1], "child"):
    (rundir.write_json(sys.argv[1] + "/x.json", {}))
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_a_dead_holder_s_lock_is_taken_over(tmp_path):
    """kill -9 of the holder: the OS frees the flock; the next writer takes it over, names the
    dead holder, and removes the temporary files it left."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(run), "60"], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(RunLocked, match=f"pid {proc.pid} "):
        with rundir.lock(run):
            pass
    (run / ".metrics.json.123.456.tmp").write_text("half")      # what a kill mid-write leaves
    proc.kill()
    proc.wait()
    with rundir.lock(run, "training") as me:
        assert me.previous.pid == proc.pid and me.pid == os.getpid()
    assert sorted(p.name for p in run.iterdir()) == [".lock", "x.json"]


def test_a_child_started_by_the_holder_writes_under_its_lock(tmp_path):
    """The sweep holds a run's lock while the notebooks it executes write it."""
    run = tmp_path / "run"
    with rundir.lock(run, "sweep"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(run), "0"], capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "held", out.stderr
        env = {k: v for k, v in os.environ.items() if k != rundir.LOCKS_ENV}
        other = subprocess.run([sys.executable, "-c", CHILD, str(run), "0"], capture_output=True,
                               text=True, timeout=120, env=env)
        assert other.returncode == 1 and "RunLocked" in other.stderr     # not ours: refused
    assert rundir.LOCKS_ENV not in os.environ or not os.environ[rundir.LOCKS_ENV]
