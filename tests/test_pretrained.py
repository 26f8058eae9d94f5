"""Shipped models: weights as safetensors beside config.yaml, loaded without unpickling."""
import pickle
import shutil

import pytest
import torch

from bagcert_lib import load_pretrained
from bagcert_lib.config import profile_config
from bagcert_lib.pretrained import WEIGHTS, NotSafetensorsError, export_run, read_weights
from bagcert_lib.runs import certify_run
from bagcert_lib.train import CHECKPOINT, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory, colour_folder):
    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), rf=5, epochs=1,
                         eval_size=12, test_size=24)
    out = train(cfg, run, progress=False)
    return run, out["model"].eval(), cfg


def test_every_run_ships_its_weights(trained):
    run, model, cfg = trained
    assert (run / WEIGHTS).is_file() and (run / "config.yaml").is_file()
    shipped, loaded_cfg = load_pretrained(run)
    assert loaded_cfg == cfg
    x = torch.rand(3, 3, 32, 32)
    assert torch.allclose(shipped(x), model(x), atol=1e-5)    # same weights (memory formats differ)
    state, meta = read_weights(run / WEIGHTS)
    assert meta["format"] == "bagcert" and "optimizer" not in " ".join(state)
    assert (run / WEIGHTS).stat().st_mode & 0o044 == (run / "config.yaml").stat().st_mode & 0o044


def test_certify_needs_no_checkpoint(trained, tmp_path, monkeypatch):
    """A fresh clone has model.safetensors and config.yaml only: certification works by name."""
    run, _, _ = trained
    shipped = tmp_path / "results" / run.name
    shipped.mkdir(parents=True)
    for f in (WEIGHTS, "config.yaml"):
        shutil.copy(run / f, shipped / f)
    monkeypatch.setenv("BAGCERT_RESULTS", str(tmp_path / "results"))
    assert not (shipped / CHECKPOINT).exists()
    df = certify_run(run.name, patches=[(3, 3)], progress=False)
    assert (df.n == 24).all() and (df.certified_accuracy <= df.clean_accuracy).all()
    model, _ = load_pretrained(run.name)
    assert model.receptive_field == 5


def test_certifying_one_shape_keeps_the_others(trained, tmp_path):
    """``certify <run> --patches 5`` on a run whose certification.csv holds every figure's shapes
    replaces the 5×5 rows and keeps the others (a one-shape certify once erased them)."""
    import pandas as pd

    run, _, _ = trained
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    first = certify_run(copy, patches=[(3, 3), (5, 5), (2, 12)], progress=False)
    before = pd.read_csv(copy / "certification.csv", dtype={"condition": str})
    assert list(before.patch) == list(first.patch) == ["3x3", "3x3", "5x5", "5x5", "12x2", "12x2"]
    (copy / "certification.csv").write_text(                 # mark the old rows to see them replaced
        before.assign(device="before").to_csv(index=False))
    again = certify_run(copy, patches=[(5, 5), (4, 4)], progress=False)
    after = pd.read_csv(copy / "certification.csv", dtype={"condition": str})
    assert list(after.patch) == ["3x3", "3x3", "5x5", "5x5", "12x2", "12x2", "4x4", "4x4"]
    assert (after.device == "before").tolist() == [True, True, False, False, True, True, False, False]
    pd.testing.assert_frame_equal(after.iloc[2:4].reset_index(drop=True),
                                  again.iloc[:2].astype({"condition": str}).reset_index(drop=True),
                                  check_dtype=False)


def test_certify_test_size_lifts_the_runs_cap(trained, tmp_path):
    """The run's config.yaml caps certification at its test_size (24 of the 120 test images);
    ``test_size`` asks for "all" or a number instead. Rows record n and the split's size, from
    which ``certification_covers`` tells whether a run is certified on as many images as asked
    (a file without the split's size: when its config asked for the same test_size)."""
    import pandas as pd

    from bagcert_lib.rundir import RunFolderError, certification_covers

    run, _, _ = trained
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    capped = certify_run(copy, patches=[(3, 3)], progress=False)
    assert (capped.n == 24).all() and (capped.test_split == 120).all()
    assert certification_covers(copy, 24) and not certification_covers(copy, 60)
    assert not certification_covers(copy, "all") and not certification_covers(copy, None)
    whole = certify_run(copy, patches=[(3, 3)], progress=False, test_size="all")
    assert (whole.n == 120).all()
    assert certification_covers(copy, "all") and certification_covers(copy, 500)   # 500 > the split
    assert (certify_run(copy, patches=[(3, 3)], progress=False, test_size="60").n == 60).all()
    assert not certification_covers(copy, "all")
    old = pd.read_csv(copy / "certification.csv").drop(columns="test_split")
    old.to_csv(copy / "certification.csv", index=False)                 # written before the column
    assert certification_covers(copy, 24) and not certification_covers(copy, "all")
    certify_run(copy, patches=[(5, 5)], progress=False, test_size=30)   # old 3×3 rows (60), new 5×5 (30)
    assert certification_covers(copy, 30) and not certification_covers(copy, 40)
    (copy / "certification.csv").write_text("patch,condition\n5x5,3.2\n")
    with pytest.raises(RunFolderError, match="certification.csv: has no n column"):
        certification_covers(copy, 30)
    for bad in (0, -5, "some", 2.5):
        with pytest.raises(ValueError, match="positive number of images or 'all'"):
            certify_run(copy, patches=[(3, 3)], progress=False, test_size=bad)


def test_certify_compiled_marks_its_rows_and_lands_on_the_eager_numbers(trained, tmp_path):
    """``certify --compile``: the model runs through torch.compile and the rows say so; on this
    model, whose images lie far from any decision, every number is the eager one (a compiled
    model rounds differently, so near a decision an image may change)."""
    run, _, _ = trained
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    eager = certify_run(copy, patches=[(3, 3), (12, 2)], progress=False)
    fast = certify_run(copy, patches=[(3, 3), (12, 2)], progress=False, compile=True)
    assert not eager.compiled.any() and fast.compiled.all()
    key = ["patch", "condition", "n", "clean_accuracy", "certified_accuracy"]
    assert fast[key].equals(eager[key])


class _Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch pwned-by-pickle",))


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_payload_is_refused(trained, tmp_path, monkeypatch, writer):
    run, _, _ = trained
    bad = tmp_path / "bad"
    bad.mkdir()
    shutil.copy(run / "config.yaml", bad / "config.yaml")
    payload = {"classifier.weight": _Payload()}
    if writer == "torch.save":
        torch.save(payload, bad / WEIGHTS)
    else:
        (bad / WEIGHTS).write_bytes(pickle.dumps(payload))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(NotSafetensorsError, match="not a safetensors file"):
        load_pretrained(bad)
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_garbage_is_refused(tmp_path, trained):
    run, _, _ = trained
    shutil.copy(run / "config.yaml", tmp_path / "config.yaml")
    (tmp_path / WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(NotSafetensorsError):
        load_pretrained(tmp_path)


def test_export_from_checkpoint(trained, tmp_path):
    run, model, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    (copy / WEIGHTS).unlink()
    export_run(copy)
    a, _ = read_weights(copy / WEIGHTS)
    b, _ = read_weights(run / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_export_refuses_a_mid_epoch_checkpoint(trained, tmp_path):
    """Weights saved between epochs' ends match no epoch's numbers: they are not shipped."""
    run, _, _ = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    ck = torch.load(copy / CHECKPOINT, weights_only=True)
    ck.update(epoch=0, step=3)
    torch.save(ck, copy / CHECKPOINT)
    with pytest.raises(ValueError, match="3 steps into epoch 2"):
        export_run(copy)


def _fake_run(root, name, *, rf=7, margin=0.5, head="heaviside", width=8, epochs=2, flops=None,
              finished=True, weights=True):
    import json

    import yaml

    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"rf": rf, "margin": margin, "head": head, "sigma": 0.0, "seed": 0, "profile": "smoke",
         "width": width, "epochs": epochs, "train_size": 256, "method": "bagcert"}))
    (run / "metrics.json").write_text(json.dumps({"finished": finished}))
    (run / "provenance.json").write_text(json.dumps({} if flops is None else {"training_flops": flops}))
    if weights:
        (run / WEIGHTS).write_bytes(b"not read by shipped_headline")
    return run


def test_shipped_headline_picks_the_most_compute(tmp_path):
    from bagcert_lib.results import shipped_headline

    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        shipped_headline(tmp_path)
    _fake_run(tmp_path, "small", width=8, epochs=2)
    _fake_run(tmp_path, "big-no-weights", width=64, epochs=40, weights=False)
    _fake_run(tmp_path, "other-rf", rf=9, width=64, epochs=40)
    _fake_run(tmp_path, "sigmoid", head="sigmoid", width=64, epochs=40)
    _fake_run(tmp_path, "unfinished", width=64, epochs=40, finished=False)
    assert shipped_headline(tmp_path).name == "small"          # finished beats bigger, unfinished
    _fake_run(tmp_path, "wide", width=48, epochs=4)
    assert shipped_headline(tmp_path).name == "wide"           # width × epochs without FLOPs
    for run, flops in (("small", 1e9), ("wide", 2e9), ("unfinished", 9e9)):
        (tmp_path / run / "provenance.json").write_text(f'{{"training_flops": {flops}}}')
    _fake_run(tmp_path, "long", width=16, epochs=200, flops=5e9)
    assert shipped_headline(tmp_path).name == "long"           # most training FLOPs


def test_a_committed_shipped_model_reproduces_its_numbers():
    """A fresh clone certifies a committed run with no training: the smallest shipped BagCert model
    certified on the whole test set (smoke runs, certified on 200 images, only when there is no
    other), certified again, gives its committed certification.csv (to 0.5 points: an AVX2 machine
    computes in fp32 where the run used bf16)."""
    import pandas as pd
    import yaml

    from bagcert_lib import data as data_mod
    from bagcert_lib.config import REPO_ROOT

    def config(w):
        return yaml.safe_load((w.parent / "config.yaml").read_text())

    shipped = sorted((w for w in (REPO_ROOT / "results" / "runs").glob(f"*/{WEIGHTS}")
                      if config(w).get("method", "bagcert") == "bagcert"),
                     key=lambda w: (config(w).get("profile") == "smoke", w.stat().st_size))
    if not shipped:
        pytest.skip("no shipped model committed yet")
    try:
        data_mod.load_cifar10(progress=False)
    except data_mod.DataNotFoundError as e:
        pytest.skip(f"no CIFAR-10 here: {e}")
    run = shipped[0].parent
    committed = pd.read_csv(run / "certification.csv", dtype={"condition": str}).query("patch == '5x5'")
    df = certify_run(run, patches=[(5, 5)], progress=False, filename="certification_check.csv")
    (run / "certification_check.csv").unlink()
    for cond in ("3.2", "3.3"):
        a = committed.query("condition == @cond").iloc[0]
        b = df.query("condition == @cond").iloc[0]
        assert a.n == b.n == (config(shipped[0]).get("test_size") or 10_000)
        assert abs(a.clean_accuracy - b.clean_accuracy) <= 0.005
        assert abs(a.certified_accuracy - b.certified_accuracy) <= 0.005
