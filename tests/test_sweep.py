"""The sweep's grids come from _config.yml: Figure 2's RF x M, Figure 8's heads x seeds, the
headline first (attacked on every test image), and, under `cpu`, the longer headline run last."""
import contextlib
import threading
from pathlib import Path

import pytest

from bagcert_lib.config import grids
from bagcert_lib.sweep import grid_jobs, sweep


def test_grids_match_the_paper():
    g = grids()
    fig2, fig8 = grid_jobs("figure2"), grid_jobs("figure8")
    assert len(fig2) == len(g["receptive_fields"]) * len(g["margins"]) == 20
    assert len(fig8) == len(g["figure8"]["heads"]) * len(g["figure8"]["seeds"]) == 15
    jobs = grid_jobs("all", profile="cpu")
    assert (jobs[0].rf, jobs[0].margin, jobs[0].attack_n) == (7, 0.5, None)   # headline: all images
    # the headline is in both grids once; then the two DS baselines; cpu_long at the end
    assert len(jobs) == 20 + 15 - 1 + 2 + 1
    assert [j.extra.get("method") for j in jobs[-3:-1]] == ["ds-block", "ds-column"]
    assert [j.steps[2:] for j in jobs[-3:-1]] == [("attack-ds",), ("attack-ds", "attack-mask-ds")]
    assert jobs[-1].profile == "cpu_long" and jobs[-1].attack_n == 1000
    assert all(j.profile is None for j in grid_jobs("all", profile="smoke"))


def test_figure8_query_selects_the_figure8_grid(committed_runs):
    """Figure 8's page and Figure 2's seed-spread line select the same runs: the grid's heads x seeds."""
    from bagcert_lib.results import figure8_query, load_runs, select_runs

    f8 = grids()["figure8"]
    runs = select_runs(load_runs(committed_runs), "cpu").query(figure8_query())
    assert sorted(zip(runs["head"], runs["seed"])) == sorted((h, s) for h in f8["heads"] for s in f8["seeds"])
    assert len(runs.query("head == 'heaviside'")) == len(f8["seeds"])


def test_dry_run_names_every_run_directory(tmp_path):
    dirs = sweep("smoke", "figure2", results=tmp_path, dry_run=True)
    assert len({d.name for d in dirs}) == 20 and all(d.parent == tmp_path for d in dirs)
    assert not any(tmp_path.iterdir())   # a dry run writes nothing


def test_dry_run_says_how_far_a_certification_got(tmp_path, capsys):
    """A trained run whose certification was killed: the dry run says certify is left, and how
    many of its images are saved (rundir.Parts)."""
    import json

    import pandas as pd

    from bagcert_lib.rundir import Parts

    run_dir = tmp_path / grid_jobs("headline", profile="smoke")[0].name("smoke")
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text(json.dumps({"finished": True, "epoch": 1}))
    parts = Parts(run_dir, "certification.csv", {"n": 1200})
    for a in (0, 500):
        parts.save(a, a + 500, pd.DataFrame({"patch": ["5x5"], "condition": ["3.2"], "n": [500]}))
    sweep("smoke", "headline", results=tmp_path, dry_run=True)
    out = capsys.readouterr().out
    assert "to do: certify, attack (certified 1,000 of 1,200 images so far)" in out


@contextlib.contextmanager
def another_sweep_holds(run_dir):
    """Another sweep holds ``run_dir``'s lock (a thread has its own lock) while the block runs."""
    from bagcert_lib.sweep import run_lock

    held, release = threading.Event(), threading.Event()

    def other_sweep():
        with run_lock(run_dir) as mine:
            assert mine
            held.set()
            release.wait(60)
    holder = threading.Thread(target=other_sweep)
    holder.start()
    held.wait(60)
    try:
        yield
    finally:
        release.set()
        holder.join()


def test_a_locked_run_is_skipped_and_a_finished_one_not_rerun(tmp_path):
    """Two sweeps on one results folder: the second skips the configuration the first holds; once
    the lock is free, finished steps are skipped (nothing executes: these files say all is done)."""
    import json

    from bagcert_lib.sweep import Job, run_job, run_lock

    job, log = Job(7, 0.5), []
    run_dir = tmp_path / job.name("smoke")
    run_dir.mkdir()
    with another_sweep_holds(run_dir):
        assert run_job(job, "smoke", tmp_path, "cpu", log=log.append) is None
        with run_lock(run_dir) as again:      # a second holder is refused while the first holds it
            assert not again
    assert log == [f"[busy] {run_dir.name}: another process is running it; skipped"]
    (run_dir / "metrics.json").write_text(json.dumps({"finished": True}))
    (run_dir / "certification.csv").write_text(CERTIFIED)
    (run_dir / "attack.json").write_text("{}")
    log.clear()
    assert run_job(job, "smoke", tmp_path, "cpu", log=log.append) == run_dir
    assert [line.split(":")[0] for line in log] == [f"[skip] {run_dir.name}"] * 3


def test_submitit_local_executor_runs_the_headline(tmp_path):
    """``--executor local``: the same job function a SLURM array runs, through submitit's
    LocalExecutor, at smoke scale: train -> certify -> attack into the run directory."""
    from bagcert_lib.sweep import main

    results = tmp_path / "runs"
    main(["--profile", "smoke", "--grid", "headline", "--executor", "local", "--results",
          str(results), "--epochs", "1"])
    run_dir = results / "smoke-rf7-m0.5-heaviside-s0-seed0"
    for name in ("config.yaml", "history.csv", "metrics.json", "provenance.json",
                 "certification.csv", "attack.json", "train.ipynb"):
        assert (run_dir / name).is_file(), name
    assert (tmp_path / "submitit").is_dir()          # submitit's logs beside the runs


def test_cluster_jobs_are_requeued_with_their_arguments():
    """At a preemption or its time limit, submitit asks the job's callable for the submission to
    requeue: the same configuration, which resumes from the run's last checkpoint."""
    import pickle

    submitit = pytest.importorskip("submitit")
    from bagcert_lib.sweep import ClusterJob, grid_jobs

    job = grid_jobs("headline", 1000, "smoke")[0]
    first = submitit.helpers.DelayedSubmission(ClusterJob(), job, "smoke", "/results", {"epochs": 1})
    again = first._checkpoint_function()          # what submitit's signal handler calls
    assert isinstance(again, submitit.helpers.DelayedSubmission)
    assert isinstance(again.function, ClusterJob) and again.args == first.args
    assert pickle.loads(pickle.dumps(again)).args == first.args     # submitit pickles it


def test_submitit_job_of_two_tasks_trains_with_ddp(tmp_path):
    """``--tasks-per-job 2`` (as ``--gpus-per-job 2`` on a cluster): both tasks train the run with
    DDP (gloo here), rank 0 certifies and attacks; provenance names the two processes."""
    import json

    from bagcert_lib.sweep import main

    results = tmp_path / "runs"
    main(["--profile", "smoke", "--grid", "headline", "--executor", "local", "--tasks-per-job",
          "2", "--results", str(results), "--epochs", "1"])
    run_dir = results / "smoke-rf7-m0.5-heaviside-s0-seed0"
    prov = json.loads((run_dir / "provenance.json").read_text())
    assert (prov["world_size"], prov["backend"], len(prov["devices"])) == (2, "gloo", 2)
    assert json.loads((run_dir / "metrics.json").read_text())["finished"]
    assert (run_dir / "certification.csv").is_file() and (run_dir / "attack.json").is_file()


#: A certification.csv of the smoke profile's 200 test images (of a 10,000-image split).
CERTIFIED = ("patch,patch_h,patch_w,condition,n,clean_accuracy,certified_accuracy,test_split\n"
             "5x5,5,5,3.2,200,0.4146,0.1025,10000\n")


def _finished_run_without_weights(run_dir):
    """The files a run committed before models were shipped holds: no weights, no checkpoint."""
    import json

    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("rf: 7\nmargin: 0.5\nprofile: smoke\ntest_size: 200\n")
    (run_dir / "metrics.json").write_text(json.dumps({"finished": True, "clean_accuracy": 0.41}))
    (run_dir / "provenance.json").write_text(json.dumps(
        {"git": {"commit": "7211e83"}, "torch": "2.13.0+cpu", "device": "CPU", "wall_s": 1381.0}))
    (run_dir / "certification.csv").write_text(
        "patch,patch_h,patch_w,condition,n,clean_accuracy,certified_accuracy\n"
        "5x5,5,5,3.2,200,0.4146,0.1025\n5x5,5,5,3.3,200,0.4146,0.0896\n")
    (run_dir / "attack.json").write_text(json.dumps({"n": 10000, "adversarial_accuracy": 0.23,
                                                     "certified_broken": 0, "seconds": 554.1}))
    (run_dir / "train.ipynb").write_text("{}")


def _fake_steps(executed, stop_in_train=False):
    """A stand-in for papermill.execute_notebook that writes what each step leaves in its run
    directory (the steps themselves are tested elsewhere); ``stop_in_train``: killed after one
    epoch of training."""
    import json
    from pathlib import Path

    def execute(nb, out, parameters, **kw):
        executed.append(parameters)
        run, step = Path(out).parent, Path(nb).stem
        if step == "train":
            (run / "config.yaml").write_text("rf: 7\nmargin: 0.5\nprofile: smoke\n")
            (run / "metrics.json").write_text(json.dumps({"epoch": 1, "finished": not stop_in_train}))
            (run / "checkpoint.pt").write_bytes(b"resume")
            if stop_in_train:
                raise KeyboardInterrupt("the machine was taken back")
            (run / "model.safetensors").write_bytes(b"weights")
            (run / "provenance.json").write_text(json.dumps({"git": {"commit": "abc1234"},
                                                             "torch": "2.14.1"}))
        elif step == "certify":                     # the test images asked for, of 10,000
            want = parameters.get("test_size", 200)
            n = 10000 if want == "all" else min(want, 10000)
            (run / "certification.csv").write_text(
                "patch,patch_h,patch_w,condition,n,clean_accuracy,certified_accuracy,test_split\n"
                f"5x5,5,5,3.2,{n},0.4200,0.1100,10000\n5x5,5,5,3.3,{n},0.4200,0.0950,10000\n")
        else:
            (run / "attack.json").write_text(json.dumps({"n": 1000, "certified_broken": 0}))
    return execute


def test_retrain_unshipped_keeps_the_old_run_until_the_new_one_replaces_it(tmp_path, monkeypatch):
    """``--retrain-unshipped``: a finished run with no weights and no checkpoint is trained,
    certified and attacked again in <run>/retrain/<run>/ while the old run stays whole; a retrain
    stopped half-way resumes there; the finished one replaces the old run, whose numbers go to
    previous.json. Without the flag the run is left alone."""
    import json

    import papermill
    import pytest

    from bagcert_lib.sweep import PREVIOUS, RETRAIN, Job, retrain_dir, run_job, sweep, unshipped

    job = Job(7, 0.5)
    run_dir = tmp_path / job.name("smoke")
    _finished_run_without_weights(run_dir)
    old_files = sorted(p.name for p in run_dir.iterdir())
    assert unshipped(run_dir)
    executed = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed))

    log = []
    run_job(job, "smoke", tmp_path, "cpu", log=log.append)            # no flag: nothing to do
    assert executed == [] and not (run_dir / PREVIOUS).exists()
    assert [line.split(":")[0] for line in log] == [f"[skip] {run_dir.name}"] * 3
    log.clear()

    def listed():
        lines = []
        with monkeypatch.context() as m:
            m.setattr("builtins.print", lambda *a, **k: lines.append(" ".join(map(str, a))))
            sweep("smoke", "headline", results=tmp_path, dry_run=True, retrain_unshipped=True)
        return "\n".join(lines)
    assert "(retrain: no weights)" in listed()

    # killed one epoch into the retrain (the machine stopped): the old run is untouched
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed, stop_in_train=True))
    with pytest.raises(KeyboardInterrupt):
        run_job(job, "smoke", tmp_path, "cpu", log=log.append, retrain_unshipped=True)
    new = retrain_dir(run_dir)
    assert new == run_dir / RETRAIN / run_dir.name
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == sorted(old_files + [RETRAIN])
    assert json.loads((run_dir / "metrics.json").read_text())["clean_accuracy"] == 0.41
    assert log[0].startswith(f"[redo] {run_dir.name}") and "training it again" in log[0]
    assert "7211e83" in log[0]
    assert executed[0]["results"] == str(run_dir / RETRAIN) and executed[0]["name"] == run_dir.name
    assert "(retrain: no weights; 1 epochs retrained so far)" in listed()
    assert unshipped(run_dir)                                # still work to do
    from bagcert_lib.results import run_dirs
    assert run_dirs(tmp_path) == [run_dir]                   # the book sees the old run only

    # started again: it resumes in the same folder, then replaces the old run
    executed.clear(), log.clear()
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed))
    run_job(job, "smoke", tmp_path, "cpu", log=log.append, retrain_unshipped=True)
    assert "resuming its retrain" in log[0] and log[-1].startswith(f"[swap] {run_dir.name}")
    assert len(executed) == 3 and executed[0]["rf"] == 7 and executed[2]["n"] == 1000
    assert executed[1]["run_dir"] == executed[2]["run_dir"] == str(new)
    assert not (run_dir / RETRAIN).exists() and not unshipped(run_dir)
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == [
        "attack.json", "certification.csv", "checkpoint.pt", "config.yaml", "metrics.json",
        "model.safetensors", PREVIOUS, "provenance.json"]
    old = json.loads((run_dir / PREVIOUS).read_text())
    assert (old["commit"], old["torch"], old["metrics"]["clean_accuracy"]) == ("7211e83", "2.13.0+cpu", 0.41)
    assert old["certification"][1] == {"patch": "5x5", "patch_h": "5", "patch_w": "5", "condition": "3.3", "n": "200",
                                       "clean_accuracy": "0.4146", "certified_accuracy": "0.0896"}
    assert old["attack"]["adversarial_accuracy"] == 0.23 and old["attack"]["certified_broken"] == 0
    # the book compares the two runs (results.load_retrained)
    from bagcert_lib.results import load_retrained

    again = load_retrained(tmp_path).set_index("condition")
    assert list(again.index) == ["3.2", "3.3"]
    assert again.loc["3.2", ["clean_accuracy_before", "clean_accuracy_after"]].tolist() == [0.4146, 0.42]
    assert again.loc["3.3", ["certified_accuracy_before", "certified_accuracy_after"]].tolist() == [0.0896, 0.095]
    assert again.loc["3.2", ["commit_before", "commit_after", "torch_after"]].tolist() == ["7211e83", "abc1234", "2.14.1"]
    log.clear()
    run_job(job, "smoke", tmp_path, "cpu", log=log.append, retrain_unshipped=True)   # nothing left
    assert [line.split(":")[0] for line in log] == [f"[skip] {run_dir.name}"] * 3


def test_a_replacement_stopped_part_way_is_finished_next_time(tmp_path, monkeypatch):
    """Killed while the finished retrain replaced the old run (summary written, old files half
    deleted): the next sweep, with or without the flag, completes it and keeps the old numbers."""
    import json

    import papermill

    from bagcert_lib.sweep import PREVIOUS, RETRAIN, Job, retrain_dir, run_job, summarise

    job = Job(7, 0.5)
    run_dir = tmp_path / job.name("smoke")
    _finished_run_without_weights(run_dir)
    new = retrain_dir(run_dir)
    new.mkdir(parents=True)
    execute = _fake_steps([])
    for step in ("train", "certify", "attack"):
        execute(f"{step}.ipynb", str(new / f"{step}.ipynb"), {})
    (new / PREVIOUS).write_text(json.dumps(summarise(run_dir)))
    for f in ("metrics.json", "provenance.json"):            # where the kill came
        (run_dir / f).unlink()
    executed, log = [], []
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed))
    run_job(job, "smoke", tmp_path, "cpu", log=log.append)
    assert executed == [] and log[0].startswith(f"[swap] {run_dir.name}") and "7211e83" in log[0]
    assert not (run_dir / RETRAIN).exists() and (run_dir / "model.safetensors").is_file()
    assert json.loads((run_dir / PREVIOUS).read_text())["metrics"]["clean_accuracy"] == 0.41
    assert json.loads((run_dir / "provenance.json").read_text())["git"]["commit"] == "abc1234"


def test_a_finished_run_with_a_checkpoint_exports_instead(tmp_path, colour_folder):
    """A finished run that has its checkpoint but no model.safetensors (trained by older code)
    gets its weights exported, not retrained."""
    from bagcert_lib.config import profile_config
    from bagcert_lib.pretrained import WEIGHTS
    from bagcert_lib.sweep import Job, run_job, unshipped
    from bagcert_lib.train import train

    job = Job(5, 0.5, extra=dict(dataset="imagefolder", data=str(colour_folder), epochs=1,
                                 eval_size=12, test_size=24))
    run_dir = tmp_path / job.name("smoke")
    train(profile_config("smoke", rf=5, margin=0.5, **job.extra), run_dir, progress=False)
    (run_dir / WEIGHTS).unlink()
    (run_dir / "certification.csv").write_text(CERTIFIED)
    (run_dir / "attack.json").write_text("{}")
    assert not unshipped(run_dir)              # its checkpoint still has the weights
    log = []
    run_job(job, "smoke", tmp_path, "cpu", log=log.append, retrain_unshipped=True)
    assert log[0] == f"[ship] {run_dir.name}: {WEIGHTS} from its checkpoint"
    assert (run_dir / WEIGHTS).is_file() and all(line.startswith(("[ship]", "[skip]")) for line in log)
    # a checkpoint that is not the finished run's (a retrain stopped half-way beside old files)
    # is never shipped as its weights
    import pytest
    import torch

    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    torch.save({**ck, "config": {**ck["config"], "epochs": 3}}, run_dir / "checkpoint.pt")
    (run_dir / WEIGHTS).unlink()
    with pytest.raises(RuntimeError, match="checkpoint is at epoch 1 of 3"):
        run_job(job, "smoke", tmp_path, "cpu", log=log.append)
    assert not (run_dir / WEIGHTS).exists()
    # nor is one written mid-epoch, even with as many whole epochs as the run plans
    torch.save({**ck, "step": 5}, run_dir / "checkpoint.pt")
    with pytest.raises(RuntimeError, match="checkpoint is at epoch 1 and 5 steps of 1"):
        run_job(job, "smoke", tmp_path, "cpu", log=log.append)
    assert not (run_dir / WEIGHTS).exists()


def test_a_relative_results_folder_reaches_the_notebooks_absolute(tmp_path, monkeypatch):
    """papermill runs the notebooks in notebooks/: a relative results folder must not become
    notebooks/<folder> there (a resumed run would start again from epoch 0 elsewhere)."""
    import papermill

    from bagcert_lib.sweep import Job, run_job

    executed = []
    monkeypatch.setattr(papermill, "execute_notebook",
                        lambda nb, out, parameters, **kw: executed.append(parameters))
    monkeypatch.chdir(tmp_path)
    run_dir = run_job(Job(7, 0.5), "smoke", "runs", "cpu", log=lambda _: None)
    assert run_dir == tmp_path / "runs" / Job(7, 0.5).name("smoke")
    assert executed[0]["results"] == str(tmp_path / "runs")
    assert executed[1]["run_dir"] == executed[2]["run_dir"] == str(run_dir)


def test_max_runs_stops_after_n_configurations_with_work_left(tmp_path, monkeypatch):
    """``--max-runs N``: finished configurations are skipped and not counted; of the rest, exactly
    the first N are run (papermill is a recorder here) and the others are not started."""
    import json

    import papermill

    from bagcert_lib.sweep import grid_jobs, has_work

    jobs = grid_jobs("figure8", 1000, "smoke")
    first = tmp_path / jobs[0].name("smoke")          # finished and shipped: nothing to do
    first.mkdir()
    (first / "metrics.json").write_text(json.dumps({"finished": True}))
    (first / "certification.csv").write_text(CERTIFIED)
    (first / "attack.json").write_text("{}")
    (first / "model.safetensors").write_bytes(b"")
    assert not has_work(first, jobs[0], "smoke", retrain_unshipped=True)
    _finished_run_without_weights(tmp_path / jobs[1].name("smoke"))   # work only when retraining
    assert not has_work(tmp_path / jobs[1].name("smoke"), jobs[1], "smoke")
    assert has_work(tmp_path / jobs[1].name("smoke"), jobs[1], "smoke", retrain_unshipped=True)

    executed, fake = [], _fake_steps([])

    def record(nb, out, parameters, **kw):
        executed.append((Path(out).parent.name, Path(nb).stem))
        fake(nb, out, parameters)
    monkeypatch.setattr(papermill, "execute_notebook", record)
    sweep("smoke", "figure8", results=tmp_path, devices=["cpu"], max_runs=2, retrain_unshipped=True)
    ran = list(dict.fromkeys(name for name, _ in executed))
    assert ran == [jobs[1].name("smoke"), jobs[2].name("smoke")]
    assert [step for _, step in executed] == ["train", "certify", "attack"] * 2
    assert not (tmp_path / jobs[3].name("smoke")).exists()            # never started
    with pytest.raises(ValueError, match="at least 1"):
        sweep("smoke", "figure8", results=tmp_path, max_runs=0)


def test_the_sweep_command_line_speaks_plainly():
    """A wrong grid, profile or --max-runs: one line on stderr, exit 2, no traceback."""
    import subprocess
    import sys

    for args, says in ((["--grid", "nope"], "unknown grid 'nope'"),
                       (["--profile", "nope"], "unknown profile 'nope'"),
                       (["--max-runs", "0"], "--max-runs must be at least 1"),
                       (["--max-runs", "x"], "invalid int value")):
        proc = subprocess.run([sys.executable, "-m", "bagcert_lib.sweep", *args, "--dry-run"],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and says in proc.stderr


def test_equal_compute_grid_trains_every_defense_at_each_budget():
    """Each budget: the region-scorer defenses at its profile, then DS block and column and
    PatchCleanser at the ResNet-18 size of the same training FLOPs (within the page's factor)."""
    from bagcert_lib.model import conv_macs, training_flops
    from bagcert_lib.smoothing import resnet18

    e = grids()["equal_compute"]
    jobs = grid_jobs("equal-compute", profile="cpu")
    per_budget = len(e["methods"]) + len(e["resnet_methods"])
    assert len(jobs) == per_budget * len(e["budgets"])
    names = [j.name("cpu") for j in jobs]
    assert len(set(names)) == len(names)
    assert names[:per_budget] == ["cpu-mask-bn-rf7-seed0", "cpu-cbn-rf7-seed0",
                                  "cpu-ds-column4-theta0.3-w16-e12-seed0",
                                  "cpu-ds-block4-theta0.3-w16-e12-seed0",
                                  "cpu-patchcleanser-w16-e12-k6-seed0"]
    per_epoch = (50_000 // 96) * 96
    for budget, chunk in zip(e["budgets"], (jobs[i:i + per_budget] for i in range(0, len(jobs), per_budget))):
        for j in chunk:
            if j.extra["method"].startswith("ds-"):
                flops = training_flops(conv_macs(resnet18(width=j.extra["width"])),
                                       j.extra["epochs"] * per_epoch)
                assert 1 / e["factor"] <= flops / float(budget["flops"]) <= e["factor"], j.name("cpu")


def test_a_ds_run_off_its_profiles_size_is_named_with_it():
    """The committed DS runs keep their names; the same method at another budget gets its own."""
    from bagcert_lib.config import profile_config

    assert profile_config("cpu", method="ds-block").run_name() == "cpu-ds-block4-theta0.3-seed0"
    assert (profile_config("cpu", method="ds-column", epochs=12).run_name()
            == "cpu-ds-column4-theta0.3-w16-e12-seed0")
    assert (profile_config("cpu", method="ds-block", width=32, epochs=31).run_name()
            == "cpu-ds-block4-theta0.3-w32-e31-seed0")


def test_a_run_certified_on_fewer_images_than_its_profile_asks_is_certified_again(tmp_path, monkeypatch):
    """A profile that now certifies more test images than a finished run's config.yaml asked for
    (a file without the split's size: its config's test_size) gets the run certified again on
    that many, once; training and the attack are not repeated."""
    import papermill

    from bagcert_lib.rundir import certification_covers
    from bagcert_lib.sweep import Job, has_work, run_job

    old, more = Job(7, 0.5), Job(7, 0.5, extra={"test_size": 500})
    assert old.name("smoke") == more.name("smoke")       # test_size is not part of a run's name
    run_dir = tmp_path / old.name("smoke")
    _finished_run_without_weights(run_dir)                  # certified under test_size 200
    assert not has_work(run_dir, old, "smoke") and has_work(run_dir, more, "smoke")
    executed = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed))
    run_job(more, "smoke", tmp_path, "cpu")
    assert executed == [{"run_dir": str(run_dir), "device": "cpu", "test_size": 500}]
    assert certification_covers(run_dir, 500) and not certification_covers(run_dir, "all")
    assert not has_work(run_dir, more, "smoke")
    run_job(more, "smoke", tmp_path, "cpu")
    assert len(executed) == 1


def test_a_defense_with_its_own_analysis_is_attacked_by_its_own_attack(tmp_path, monkeypatch):
    """DS block, DS column and PatchCleanser runs end with an ``attack-<name>`` step per certificate
    (runs.DEFENSE_ATTACKS, in the sweep's process; done when its record exists), BagCert with
    attack.ipynb."""
    import json

    import papermill

    from bagcert_lib import runs
    from bagcert_lib.sweep import Job, has_work, run_job

    steps = {m: Job(7, 0.5, extra={"method": m}).steps for m in ("bagcert", "ds-column", "ds-block", "patchcleanser")}
    assert steps == {"bagcert": ("train", "certify", "attack"),
                     "ds-block": ("train", "certify", "attack-ds"),
                     "ds-column": ("train", "certify", "attack-ds", "attack-mask-ds"),
                     "patchcleanser": ("train", "certify", "attack-patchcleanser")}
    executed, attacked = [], []
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed))

    def fake(name):
        def attack(run_dir, device=None, progress=True):
            attacked.append((name, run_dir.name, device))
            (run_dir / f"attack_{name.replace('-', '_')}.json").write_text(json.dumps({"certified_broken": 0}))
        return attack

    for name in ("ds", "mask-ds"):
        monkeypatch.setitem(runs.DEFENSE_ATTACKS, name, fake(name))
    job = Job(7, 0.5, extra={"method": "ds-column"})
    run_dir = run_job(job, "smoke", tmp_path, "cpu")
    assert [p.get("test_size") for p in executed][1] == 200
    assert attacked == [("ds", run_dir.name, "cpu"), ("mask-ds", run_dir.name, "cpu")]
    assert not has_work(run_dir, job, "smoke")
    run_job(job, "smoke", tmp_path, "cpu")
    assert len(executed) == 2 and len(attacked) == 2


def test_sweep_compile_compiles_training_and_certification(tmp_path, monkeypatch):
    """``sweep --compile``: the train notebook gets compile=True, and so does certify."""
    import papermill

    from bagcert_lib.sweep import Job, run_job

    from bagcert_lib import runs

    executed = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake_steps(executed))
    monkeypatch.setitem(runs.DEFENSE_ATTACKS, "ds", lambda run_dir, **kw: (run_dir / "attack_ds.json").write_text("{}"))
    run_job(Job(7, 0.5, extra={"method": "ds-block"}), "smoke", tmp_path, "cpu", compile=True)
    assert [p.get("compile") for p in executed] == [True, True]
    executed.clear()
    run_job(Job(7, 0.5, seed=1, extra={"method": "ds-block"}), "smoke", tmp_path, "cpu")
    assert [p.get("compile") for p in executed] == [None, None]


def test_a_sweep_that_joins_certifies_beside_the_run_it_finds_busy(tmp_path, monkeypatch):
    """``--join``: a locked configuration with a certification under way gets chunks certified
    here (the runs module's join); one without stays skipped; a cluster executor refuses it."""
    from bagcert_lib import runs, rundir
    from bagcert_lib.sweep import Job, run_job, sweep

    job, log, joined = Job(7, 0.5), [], []
    run_dir = tmp_path / job.name("smoke")
    run_dir.mkdir()
    monkeypatch.setattr(runs, "join_certification",
                        lambda into, device=None, progress=True: joined.append((into, device)) or [(0, 500), (500, 1000)])
    with another_sweep_holds(run_dir):
        assert run_job(job, "smoke", tmp_path, "cpu", log=log.append, join=True) is None
        assert joined == [] and log[-1].startswith(f"[busy] {run_dir.name}")
        rundir.Parts(run_dir, rundir.CERTIFICATION, {"n": 1000}).start()
        assert run_job(job, "smoke", tmp_path, "cpu", log=log.append, join=True) is None
        assert joined == [(run_dir, "cpu")]
        assert log[-1].startswith(f"[join] {run_dir.name}: certified 2 chunks of its certification "
                                  "(1,000 test images) beside pid ")
        assert run_job(job, "smoke", tmp_path, "cpu", log=log.append) is None   # without join: skipped
        assert len(joined) == 1 and log[-1].startswith("[busy]")
    with pytest.raises(ValueError, match="--join runs on this machine only"):
        sweep("smoke", "headline", tmp_path, executor=object(), join=True)
