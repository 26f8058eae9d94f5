"""A certification saved chunk by chunk (runs.certify_run, rundir.Parts): the chunks add up to
the rows of one pass, a killed certification resumes at its first missing chunk, and chunks
saved for another model, shapes or images are never mixed in."""
import shutil

import pandas as pd
import pytest

from bagcert_lib import rundir, runs
from bagcert_lib.config import profile_config
from bagcert_lib.train import train

KEY = ["patch", "condition", "n", "clean_accuracy", "certified_accuracy"]
PATCHES = [(3, 3), (5, 5), (2, 12)]


class Killed(Exception):
    """Stands for the session's end in the middle of a chunk."""


@pytest.fixture(scope="module", params=["bagcert", "patchcleanser"])
def trained(request, tmp_path_factory, colour_folder):
    """A tiny run of BagCert (two conditions per shape) or PatchCleanser (masks, passes), 24 test
    images."""
    extra = dict(method="patchcleanser", width=4) if request.param == "patchcleanser" else dict(rf=5)
    cfg = profile_config("smoke", dataset="imagefolder", data=str(colour_folder), epochs=1,
                         train_size=None, eval_size=12, test_size=24, **extra)
    run = tmp_path_factory.mktemp("runs") / request.param
    train(cfg, run, progress=False)
    whole = runs.certify_run(run, patches=PATCHES, progress=False, filename="whole.csv")
    return run, whole


def _copy(run, tmp_path):
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    return copy


def _killed_in_third_chunk(monkeypatch):
    """Chunks certified from here on are counted in ``calls``; the third raises Killed while
    ``kill`` (returned too) says so: clear both to let a resumed certification run."""
    real, calls, kill = runs.evaluate_batches, [], [3]

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) in kill:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(runs, "evaluate_batches", evaluate)
    return calls, kill


def _same(df, whole):
    cols = KEY + [c for c in ("passes", "masks") if c in whole]
    pd.testing.assert_frame_equal(df[cols].astype({"condition": str}).reset_index(drop=True),
                                  whole[cols].astype({"condition": str}).reset_index(drop=True),
                                  check_dtype=False)


def test_chunks_add_up_to_one_pass(trained, tmp_path):
    """24 images in chunks of 5 (5, 5, 5, 5, 4): every count and accuracy is the one-pass one,
    the seconds and attrs add up, and no chunk is left behind."""
    run, whole = trained
    copy = _copy(run, tmp_path)
    df = runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    _same(df, whole)
    assert (df.n == 24).all() and (df.test_split == 120).all() and not df.compiled.any()
    assert df.attrs["n"] == 24 and df.attrs["certify_s"] > 0 and df.attrs["forward_s"] > 0
    _same(pd.read_csv(copy / "certification.csv", dtype={"condition": str}), whole)
    assert not (copy / "certification.parts").exists()
    assert rundir.certification_progress(copy) is None


def test_a_killed_certification_resumes_at_its_first_missing_chunk(trained, tmp_path, monkeypatch,
                                                                    capsys):
    run, whole = trained
    copy = _copy(run, tmp_path)
    calls, kill = _killed_in_third_chunk(monkeypatch)
    with pytest.raises(Killed):
        runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    assert not (copy / "certification.csv").exists()
    assert rundir.certification_progress(copy) == (10, 24)
    assert sorted(p.name for p in (copy / "certification.parts").glob("*.csv")) == ["0-5.csv", "5-10.csv"]
    assert not rundir.certification_covers(copy, 24)

    calls.clear()
    kill.clear()
    df = runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    assert len(calls) == 3                                  # 10-15, 15-20, 20-24 only
    _same(df, whole)
    assert df.attrs["n"] == 24 and rundir.certification_covers(copy, 24)
    assert not (copy / "certification.parts").exists()

    # saved chunks of other shapes (or another model, images, chunk size) are discarded, loudly
    calls.clear()
    kill.append(3)
    with pytest.raises(Killed):
        runs.certify_run(copy, patches=PATCHES[:1], progress=False, chunk=5)
    assert rundir.certification_progress(copy) == (10, 24)
    calls.clear()
    kill.clear()
    df = runs.certify_run(copy, patches=PATCHES, progress=True, chunk=5)
    assert len(calls) == 5
    assert "2 saved chunks belong to another certification" in capsys.readouterr().out
    _same(df, whole)


def test_saved_chunks_resume_in_a_copy_that_ships_only_its_weights(trained, tmp_path, monkeypatch):
    """A certification killed part-way, its run folder then shipped (model.safetensors, no
    checkpoint.pt, as committed runs are) and copied elsewhere: certified there, it resumes at the
    first missing chunk, because the plan names no path and the shipped weights fingerprint as
    the checkpoint's."""
    from bagcert_lib.pretrained import export_run

    run, whole = trained
    started = _copy(run, tmp_path / "here")
    calls, kill = _killed_in_third_chunk(monkeypatch)
    with pytest.raises(Killed):
        runs.certify_run(started, patches=PATCHES, progress=False, chunk=5)
    export_run(started)
    shipped = tmp_path / "there" / run.name
    shutil.copytree(started, shipped, ignore=shutil.ignore_patterns(rundir.CHECKPOINT, "*.claim", ".lock"))
    assert not (shipped / rundir.CHECKPOINT).exists() and rundir.certification_progress(shipped) == (10, 24)
    calls.clear()
    kill.clear()
    df = runs.certify_run(shipped, patches=PATCHES, progress=False, chunk=5)
    assert len(calls) == 3                                  # 10-15, 15-20, 20-24 only
    _same(df, whole)


def test_a_resume_keeps_the_saved_chunks_precision(trained, tmp_path, monkeypatch):
    """Every row records its precision (bf16 or fp32). Chunks saved in another precision (the
    certification moved to a CPU without, or with, native bf16) are refused before any work, by
    the owner and by a process that joins; on a machine of their precision it resumes."""
    import re

    from bagcert_lib import runtime
    from bagcert_lib.pretrained import load_run

    run, whole = trained
    copy = _copy(run, tmp_path)
    calls, kill = _killed_in_third_chunk(monkeypatch)
    with pytest.raises(Killed):
        runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    here = runtime.precision("cpu", load_run(copy, "cpu")[1].amp)
    assert set(rundir.Parts.join(copy).rows(0, 5).precision) == {here}
    other = {"bf16": "fp32", "fp32": "bf16"}[here]
    monkeypatch.setattr(runs, "precision", lambda device, amp=None: other)
    calls.clear()
    kill.clear()
    refused = re.escape(f"another precision (2 chunks in {here}); this process would certify in {other}")
    with pytest.raises(rundir.RunFolderError, match=refused):
        runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    with pytest.raises(rundir.RunFolderError, match=refused):
        runs.join_certification(copy, progress=False)
    assert calls == [] and rundir.certification_progress(copy) == (10, 24)

    monkeypatch.setattr(runs, "precision", runtime.precision)
    df = runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    assert len(calls) == 3 and set(df.precision) == {here}
    _same(df, whole)


def test_chunks_of_another_certification_are_not_mixed_in(trained, tmp_path, monkeypatch):
    """The plan holds the model's fingerprint (new weights, a retrain, start again) and the config
    fields that decide a certification (theta does, the device does not); an unreadable plan
    starts again too."""
    import torch

    from bagcert_lib.pretrained import load_run

    run, _ = trained
    model, _ = load_run(run, "cpu")
    other, _ = load_run(run, "cpu")
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    assert runs.fingerprint(model) == runs.fingerprint(load_run(run, "cpu")[0])
    assert runs.fingerprint(other) != runs.fingerprint(model)
    parts = rundir.Parts(tmp_path, "certification.csv", {"model": runs.fingerprint(model), "n": 24})
    parts.save(0, 5, pd.DataFrame({"patch": ["3x3"], "condition": ["PC"], "n": [5]}))
    again = rundir.Parts(tmp_path, "certification.csv", {"model": runs.fingerprint(model), "n": 24})
    assert again.done(0, 5) and not again.discarded
    new = rundir.Parts(tmp_path, "certification.csv", {"model": runs.fingerprint(other), "n": 24})
    assert new.discarded == 1 and not new.done(0, 5)
    new.save(0, 5, pd.DataFrame({"patch": ["3x3"], "condition": ["PC"], "n": [5]}))
    (new.folder / "plan.json").write_text("{")
    assert rundir.Parts(tmp_path, "certification.csv", new.plan).discarded == 1

    ds = profile_config("cpu", method="ds-column")
    assert rundir.certifying_config(ds) == rundir.certifying_config(profile_config("cpu", method="ds-column",
                                                                                   device="cuda", workers=3))
    assert rundir.certifying_config(ds) != rundir.certifying_config(profile_config("cpu", method="ds-column",
                                                                                   theta=0.2))


def test_combine_chunks_rules():
    a = pd.DataFrame({"patch": ["5x5", "5x5"], "condition": ["3.2", "3.3"], "n": [3, 3],
                      "clean_accuracy": [2 / 3, 2 / 3], "certified_accuracy": [1 / 3, 0.0],
                      "certify_s": [1.0, 2.0], "masks": [36, 36], "device": ["A", "A"]})
    b = a.assign(n=1, clean_accuracy=1.0, certified_accuracy=[1.0, 1.0], device="B")
    a.attrs, b.attrs = {"n": 3, "certify_s": 1.5, "kind": "x"}, {"n": 1, "certify_s": 0.5, "kind": "x"}
    out = runs.combine_chunks([a, b, a])
    assert out.n.tolist() == [7, 7] and out.clean_accuracy.tolist() == [5 / 7, 5 / 7]
    assert out.certified_accuracy.tolist() == [3 / 7, 1 / 7] and out.certify_s.tolist() == [3.0, 6.0]
    assert out.device.tolist() == ["A; B", "A; B"] and out.masks.tolist() == [36, 36]
    assert out.attrs == {"n": 7, "certify_s": 3.5, "kind": "x"}
    with pytest.raises(ValueError, match="the chunks disagree on 'masks'"):
        runs.combine_chunks([a, b.assign(masks=30)])
    known = a.assign(precision="bf16")                     # unknown in chunks saved before rows had it
    assert runs.combine_chunks([a, known]).precision.tolist() == ["bf16", "bf16"]
    with pytest.raises(ValueError, match="the chunks disagree on 'precision'"):
        runs.combine_chunks([known, b.assign(precision="fp32")])


# --------------------------------------------------------------------------- several processes

def _killed_after(copy, monkeypatch, chunks: int):
    """Start the owner's certification (chunks of 5) and kill it after ``chunks`` saved chunks:
    the folder then holds its plan.json and those chunks."""
    real, calls = runs.evaluate_batches, []

    def evaluate(*a, **k):
        calls.append(1)
        if len(calls) > chunks:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(runs, "evaluate_batches", evaluate)
    with pytest.raises(Killed):
        runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    monkeypatch.setattr(runs, "evaluate_batches", real)


def test_processes_that_join_certify_the_chunks_nobody_holds(trained, tmp_path, monkeypatch):
    """A joiner takes its shapes, images and chunk size from plan.json, skips saved chunks and
    chunks another process holds, and never writes certification.csv; the owner, started again,
    certifies nothing more and combines them into the one-pass rows."""
    run, whole = trained
    copy = _copy(run, tmp_path)
    _killed_after(copy, monkeypatch, chunks=1)
    assert rundir.certification_progress(copy) == (5, 24)
    other = rundir.Parts.join(copy)                         # another joiner, busy with 10-15
    with other.claim(10, 15) as got:
        assert got
        assert runs.join_certification(copy, progress=False) == [(5, 10), (15, 20), (20, 24)]
    assert runs.join_certification(copy, progress=False) == [(10, 15)]
    assert runs.join_certification(copy, progress=False) == []
    assert rundir.certification_progress(copy) == (24, 24)
    assert not (copy / "certification.csv").exists()

    calls = []
    real = runs.evaluate_batches
    monkeypatch.setattr(runs, "evaluate_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    df = runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)
    assert calls == []
    _same(df, whole)
    assert not (copy / "certification.parts").exists()


def test_the_owner_waits_for_a_chunk_another_process_holds(trained, tmp_path, monkeypatch):
    """A chunk held by a joiner is left to it; at the end the owner waits for it, and certifies it
    itself when the joiner let go without saving it (it died)."""
    import threading
    import time

    run, whole = trained
    copy = _copy(run, tmp_path)
    _killed_after(copy, monkeypatch, chunks=0)              # plan.json, no chunk yet
    real, calls = runs.evaluate_batches, []
    monkeypatch.setattr(runs, "evaluate_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    held = rundir.Parts.join(copy).claim(10, 15)
    assert held.__enter__()
    out = {}
    owner = threading.Thread(target=lambda: out.update(
        df=runs.certify_run(copy, patches=PATCHES, progress=False, chunk=5)))
    owner.start()
    deadline = time.monotonic() + 120
    while len(calls) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert len(calls) == 4 and owner.is_alive()             # the other four done, waiting for 10-15
    assert rundir.certification_progress(copy) == (19, 24)
    held.__exit__(None, None, None)                         # the joiner dies without saving
    owner.join(120)
    assert not owner.is_alive() and len(calls) == 5
    _same(out["df"], whole)


def test_joining_needs_the_same_certification(trained, tmp_path, monkeypatch):
    """Nothing under way: refused (after ``wait``). A plan of other weights (or config, data): refused,
    naming what differs."""
    run, _ = trained
    copy = _copy(run, tmp_path)
    with pytest.raises(rundir.RunFolderError, match="no certification is under way.*waited 0.2 s"):
        runs.join_certification(copy, progress=False, wait=0.2, poll=0.05)
    _killed_after(copy, monkeypatch, chunks=1)
    plan = rundir.read_json(copy / "certification.parts" / "plan.json")
    rundir.write_json(copy / "certification.parts" / "plan.json", {**plan, "model": "0" * 64})
    with pytest.raises(rundir.RunFolderError, match="differs from what this process loads in model"):
        runs.join_certification(copy, progress=False)


def test_a_chunk_of_a_replaced_certification_is_never_counted(tmp_path):
    """A joiner whose certification was replaced saves nothing; a chunk that names another plan is
    not done; a chunk saved before chunks named their plan is."""
    rows = pd.DataFrame({"patch": ["3x3"], "condition": ["PC"], "n": [5]})
    a = rundir.Parts(tmp_path, "certification.csv", {"model": "a", "n": 24})
    a.start()
    joined = rundir.Parts.join(tmp_path)
    assert joined.plan == a.plan and joined.digest == a.digest
    b = rundir.Parts(tmp_path, "certification.csv", {"model": "b", "n": 24})
    b.start()
    with pytest.raises(rundir.RunFolderError, match="another certification replaced"):
        joined.save(0, 5, rows)
    assert not b.done(0, 5)
    rundir.write_csv(b.folder / "0-5.csv", rows)
    rundir.write_json(b.folder / "0-5.json", {"n": 5, rundir.PLAN_KEY: a.digest})
    assert not b.done(0, 5)
    rundir.write_json(b.folder / "0-5.json", {"n": 5})
    assert b.done(0, 5) and b.rows(0, 5).attrs == {"n": 5}
    b.save(5, 10, rows)
    assert b.done(5, 10) and rundir.read_json(b.folder / "5-10.json")[rundir.PLAN_KEY] == b.digest
    assert rundir.Parts(tmp_path, "certification.csv", b.plan).discarded == 0


def test_certify_join_on_the_command_line(trained, tmp_path, monkeypatch, capsys):
    from bagcert_lib.__main__ import main

    run, _ = trained
    copy = _copy(run, tmp_path)
    for argv, message in [(["--join", "--patches", "5"], "--patches cannot go with --join"),
                          (["--wait", "3"], "--wait goes with --join"),
                          (["--join"], "no certification is under way")]:
        with pytest.raises(SystemExit) as e:
            main(["certify", str(copy), *argv])
        assert e.value.code == 2 and message in capsys.readouterr().err
    _killed_after(copy, monkeypatch, chunks=3)
    main(["certify", str(copy), "--join"])
    err = capsys.readouterr().err
    assert "certified 2 chunks (9 test images)" in err and "no process is certifying it now" in err
