"""The sweep's grids come from _config.yml: Figure 2's RF x M, Figure 8's heads x seeds, the
headline first (attacked on every test image), and, under `cpu`, the longer headline run last."""
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
    assert all(j.steps == ("train", "certify") for j in jobs[-3:-1])    # DS is not attacked
    assert jobs[-1].profile == "cpu_long" and jobs[-1].attack_n == 1000
    assert all(j.profile is None for j in grid_jobs("all", profile="smoke"))


def test_dry_run_names_every_run_directory(tmp_path):
    dirs = sweep("smoke", "figure2", results=tmp_path, dry_run=True)
    assert len({d.name for d in dirs}) == 20 and all(d.parent == tmp_path for d in dirs)
    assert not any(tmp_path.iterdir())   # a dry run writes nothing


def test_a_locked_run_is_skipped_and_a_finished_one_not_rerun(tmp_path):
    """Two sweeps on one results folder: the second skips the configuration the first holds; once
    the lock is free, finished steps are skipped (nothing executes: these files say all is done)."""
    import json

    from bagcert_lib.sweep import Job, run_job, run_lock

    job, log = Job(7, 0.5), []
    run_dir = tmp_path / job.name("smoke")
    run_dir.mkdir()
    with run_lock(run_dir) as mine:
        assert mine
        assert run_job(job, "smoke", tmp_path, "cpu", log=log.append) is None
        with run_lock(run_dir) as again:      # a second holder is refused while the first holds it
            assert not again
    assert log == [f"[busy] {run_dir.name}: another process is running it; skipped"]
    (run_dir / "metrics.json").write_text(json.dumps({"finished": True}))
    (run_dir / "certification.csv").write_text("patch\n")
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
