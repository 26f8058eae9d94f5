"""The command line speaks plainly: every user error is one line on stderr, exit 2, no
traceback; --debug shows the traceback."""
import subprocess
import sys

import pytest

from bagcert_lib.__main__ import main


@pytest.mark.parametrize("argv,expected", [
    (["train", "--rf", "6"], "unknown receptive field 6; choose one of [5, 7, 9, 11, 13]"),
    (["train", "--profile", "laptop"], "unknown profile 'laptop'"),
    (["train", "--margin", "-1"], "margin M must be positive"),
    (["train", "--head", "relu"], "unknown head 'relu'"),
    (["train", "--width", "0"], "width must be a positive integer"),
    (["train", "--method", "ds-ring"], "unknown method 'ds-ring'"),
    (["train", "--method", "ds-block", "--theta", "2"], "theta in [0, 1]"),
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["train", "--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
    (["train", "--shake", "maybe"], "'maybe' is not a boolean"),
    (["certify", "x", "--patches", "5y"], "patch '5y' is not N or WxH (width × height"),
    (["certify", "x", "--patches", "5x"], "patch '5x' is not N or WxH"),
    (["certify", "x", "--patches", "x5"], "patch 'x5' is not N or WxH"),
    (["certify", "x", "--patches", "5x5x5"], "patch '5x5x5' is not N or WxH"),
    (["certify", "x", "--patches", "0"], "patch '0' must be positive"),
    (["certify", "x", "--patches", "0x3"], "patch '0x3' must be positive"),
    (["certify", "x", "--test-size", "0"], "--test-size: test size must be a positive number of images or 'all'"),
    (["certify", "x", "--test-size", "half"], "--test-size: test size must be a positive number"),
    (["certify", "x", "--chunk", "0"], "argument --chunk: '0' is not allowed: give a positive integer"),
    (["train", "--sigma", "nan"], "argument --sigma: 'nan' is not allowed: give a finite number"),
    (["train", "--lr", "inf"], "argument --lr: 'inf' is not allowed: give a finite number"),
    (["train", "--margin", "inf"], "argument --margin: 'inf' is not allowed: give a finite number"),
    (["train", "--margin=-inf"], "argument --margin: '-inf' is not allowed"),
    (["train", "--stop-after", "0"], "argument --stop-after: '0' is not allowed: give a positive integer"),
    (["train", "--seed", "-1"], "seed must be >= 0"),
    (["certify", "no-such-run"], "no model.safetensors or checkpoint.pt in run directory 'no-such-run'"),
    (["export", "no-such-run"], "no checkpoint.pt in run directory 'no-such-run'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["attack", "x", "--patch", "5x"], "patch '5x' is not N or WxH"),
    (["attack", "x", "--n", "0"], "--n: test size must be a positive number"),
    (["attack", "x", "--steps", "0"], "argument --steps: '0' is not allowed: give a positive integer"),
    (["attack", "x", "--step-size", "nan"], "argument --step-size: 'nan' is not allowed"),
    (["attack", "no-such-run"], "no model.safetensors or checkpoint.pt in run directory 'no-such-run'"),
])
def test_user_errors_are_one_line(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert expected in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_and_corrupt_data(tmp_path, capsys):
    for data, expected in ((tmp_path / "nowhere", "CIFAR-10 not found. Looked in:"),
                           (tmp_path, "cifar-10-python.tar.gz: md5 ")):
        if data == tmp_path:
            (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tarball" * 100)
        with pytest.raises(SystemExit) as exit_:
            main(["train", "--profile", "smoke", "--data", str(data), "--out", str(tmp_path / "runs")])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and expected in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("checkpoint.pt"))


def test_corrupt_weights(tmp_path, capsys):
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04junk")
    (tmp_path / "config.yaml").write_text("rf: 7\nwidth: 8\n")
    with pytest.raises(SystemExit):
        main(["certify", str(tmp_path)])
    assert "is not a safetensors file" in capsys.readouterr().err


def test_debug_shows_the_traceback():
    proc = subprocess.run([sys.executable, "-m", "bagcert_lib", "train", "--rf", "6", "--debug"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "ValueError" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bagcert_lib", "train", "--rf", "6"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_estimate_prints_the_cost(capsys):
    main(["train", "--profile", "smoke", "--estimate"])
    out = capsys.readouterr().out
    assert "estimated cost on" in out and "s/step" in out and "for 2 epochs" in out


def test_a_run_without_weights_says_how_to_get_them(tmp_path, capsys):
    """A finished run committed before models were shipped: the error says why there is no model
    and the command that trains it again."""
    (tmp_path / "config.yaml").write_text("rf: 7\nprofile: cpu\n")
    (tmp_path / "metrics.json").write_text('{"finished": true}')
    with pytest.raises(SystemExit) as exit_:
        main(["certify", str(tmp_path)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.count("\n") == 1
    assert "has no trained weights" in err and "sweep --profile cpu --retrain-unshipped" in err


def test_list_names_the_shipped_models(capsys, committed_runs):
    """``list --shipped``: every row ships model.safetensors (the committed scaling runs do)."""
    from bagcert_lib.__main__ import list_runs

    committed = str(committed_runs)
    shipped = list_runs(committed, shipped_only=True)
    assert len(shipped) and shipped["weights"].all()
    assert "scaling-w16-e6-rf7-m0.5-heaviside-s0-seed0" in set(shipped["run"])
    main(["list", "--shipped", "--results", committed])
    out = capsys.readouterr().out
    assert "certified 5x5 (%)" in out and "scaling-w16-e6" in out
    row = shipped.set_index("run").loc["scaling-w16-e6-rf7-m0.5-heaviside-s0-seed0"]
    assert row["epochs"] == "6/6"          # finished; an unfinished run reads "18/48 (training)"
    every = list_runs(committed).set_index("run")["attacked"]       # the attack records each holds
    assert every["cpu-rf7-m0.5-heaviside-s0-seed0"] == "App. A.2"
    assert every["cpu-ds-column4-theta0.3-w32-e31-seed0"] == "DS, Mask-DS"
    assert every["cpu-patchcleanser-w16-e12-k6-seed0"] == "PatchCleanser"
    with pytest.raises(SystemExit) as exit_:
        main(["list", "--results", "/no/such/folder"])
    assert exit_.value.code == 2 and "no runs" in capsys.readouterr().err


def test_a_missing_run_names_each_folder_it_looked_in_once(capsys, monkeypatch):
    """From the repository root the run name resolves to the same folder two ways: say it once."""
    from bagcert_lib.runs import REPO_ROOT
    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(SystemExit):
        main(["certify", "no-such-run"])
    err = capsys.readouterr().err
    looked = err.split("looked in ")[1].split(" (--debug")[0].replace(" and ", ", ").split(", ")
    assert str(REPO_ROOT / "no-such-run") in looked and len(looked) == len(set(looked)) == 2


def test_list_shows_a_retrain_in_progress(tmp_path):
    """A run being trained again beside its old files reads "6/6, retraining 1/6"."""
    import json
    import shutil

    from bagcert_lib.__main__ import list_runs
    from bagcert_lib.config import REPO_ROOT
    from bagcert_lib.sweep import retrain_dir

    name = "smoke-rf7-m0.5-heaviside-s0-seed0"
    shutil.copytree(REPO_ROOT / "results" / "runs" / name, tmp_path / name)
    assert list_runs(tmp_path).set_index("run").loc[name, "epochs"] == "2/2"
    retrain_dir(tmp_path / name).mkdir(parents=True)
    (retrain_dir(tmp_path / name) / "metrics.json").write_text(json.dumps({"epoch": 1}))
    row = list_runs(tmp_path).set_index("run").loc[name]
    assert row["epochs"] == "2/2, retraining 1/2" and len(list_runs(tmp_path)) == 1


def test_list_shows_a_certification_under_way(tmp_path):
    """A chunked certification's saved chunks read "500/1,000 images" until it completes; the
    accuracy columns keep the finished certification's values meanwhile. A plan that cannot be
    read reads "?/? images" and is named among the errors."""
    import shutil

    import pandas as pd

    from bagcert_lib import rundir
    from bagcert_lib.__main__ import list_runs
    from bagcert_lib.config import REPO_ROOT

    name = "smoke-rf7-m0.5-heaviside-s0-seed0"
    shutil.copytree(REPO_ROOT / "results" / "runs" / name, tmp_path / name)
    before = list_runs(tmp_path).set_index("run").loc[name]
    assert before["certifying"] == ""
    parts = rundir.Parts(tmp_path / name, rundir.CERTIFICATION, {"n": 1000})
    parts.save(0, 500, pd.DataFrame({"patch": ["5x5"], "n": [500]}))
    row = list_runs(tmp_path).set_index("run").loc[name]
    assert row["certifying"] == "500/1,000 images"
    assert row["certified 5x5 (%)"] == before["certified 5x5 (%)"]
    (rundir.parts_folder(tmp_path / name) / rundir.PLAN).write_text("")
    errors = []
    assert list_runs(tmp_path, errors=errors).set_index("run").loc[name, "certifying"] == "?/? images"
    assert len(errors) == 1 and "plan.json" in str(errors[0])
    with pytest.raises(ValueError, match="plan.json"):
        list_runs(tmp_path)
    parts.remove()
    assert list_runs(tmp_path).set_index("run").loc[name, "certifying"] == ""


@pytest.mark.parametrize("text,patch", [("5", (5, 5)), ("24x1", (1, 24)), ("1x24", (24, 1)),
                                        ("2X12", (12, 2)), ("3×4", (4, 3))])
def test_patches_are_width_by_height(text, patch):
    """The paper's notation: "24x1" is 24 wide and 1 high; the library's order is (h, w)."""
    from bagcert_lib.__main__ import parse_patch

    assert parse_patch(text) == patch


def test_attack_runs_app_a2_on_a_bagcert_run_and_exits_2_on_a_broken_certificate(tmp_path, colour_folder,
                                                                                  capsys, monkeypatch):
    """``attack`` on a BagCert run: App. A.2's attack, its record printed and attack.json written;
    a certificate the attack breaks (planted) is one line on stderr and exit 2; PatchCleanser's
    options are refused for it."""
    import json

    from bagcert_lib import runs
    from bagcert_lib.config import profile_config
    from bagcert_lib.train import train

    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), width=4, epochs=1,
                         train_size=None, eval_size=12, test_size=12)
    run = tmp_path / "run"
    train(cfg, run, progress=False)
    main(["attack", str(run), "--n", "6", "--steps", "2"])
    out, err = capsys.readouterr()
    saved = json.loads((run / "attack.json").read_text())
    assert json.loads(out) == saved and saved["n"] == 6 and saved["steps"] == 2
    assert saved["certified_broken"] == 0 and "saved in" in err and "attack.json" in err
    for argv, expected in ((["--pairs"], "pairs: options of PatchCleanser's attack"),
                           (["--positions", "3"], "positions: options of PatchCleanser's attack")):
        with pytest.raises(SystemExit) as exit_:
            main(["attack", str(run), "--n", "6", *argv])
        assert exit_.value.code == 2 and expected in capsys.readouterr().err
    real = runs._attack
    monkeypatch.setattr(runs, "_attack", lambda *a: {**real(*a), "certified_broken": 2})
    with pytest.raises(SystemExit) as exit_:
        main(["attack", str(run), "--n", "6", "--steps", "1"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err      # above it: the progress bar
    assert err.splitlines()[-1].startswith("error: ") and "2 certified images broken by App. A.2" in err
