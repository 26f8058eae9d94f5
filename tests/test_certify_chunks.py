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
    real, calls, kill = runs.evaluate_batches, [], [3]

    def evaluate(*a, **k):                  # killed in its third chunk while ``kill`` says so
        calls.append(1)
        if len(calls) in kill:
            raise Killed
        return real(*a, **k)

    monkeypatch.setattr(runs, "evaluate_batches", evaluate)
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
