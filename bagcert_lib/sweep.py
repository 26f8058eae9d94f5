"""Run a profile's whole grid through the papermill notebooks: train → certify → attack.

    python -m bagcert_lib.sweep --profile cpu                  # Figures 2 and 8, the DS baselines, cpu_long
    python -m bagcert_lib.sweep --profile gpu --grid rf_sweep --devices cuda:0 cuda:1
    python -m bagcert_lib.sweep --profile cpu --devices cpu cpu   # two configurations at once, half the cores each
    python -m bagcert_lib.sweep --profile cpu --grid smoothing   # the DS baselines
    python -m bagcert_lib.sweep --profile cpu --grid equal-compute   # every defense at BagCert's two budgets
    python -m bagcert_lib.sweep --profile cpu --grid patchcleanser   # PatchCleanser at equal FLOPs
    python -m bagcert_lib.sweep --profile smoke --results /tmp/runs --dry-run
    python -m bagcert_lib.sweep --profile paper --grid figure2 --executor slurm \
        --slurm-partition gpu --gpus-per-job 4          # a SLURM job array, one job per configuration

Each configuration gets one run directory; the executed notebooks are kept beside its results.
A step whose output exists is skipped, and training resumes from its last checkpoint, so a killed
sweep picks up where it stopped when started again. With several devices, one configuration runs
per device at a time; a configuration another sweep is running (its run directory is locked,
:func:`bagcert_lib.rundir.lock`) is skipped, so two sweeps may share a results folder. The
notebooks it executes write the run directory under its lock.

``--executor slurm`` submits the grid through submitit as one SLURM job array (one job per
configuration, each resuming its run directory); ``--gpus-per-job N`` makes each job N tasks that
train with DistributedDataParallel (``distributed.py``), then rank 0 certifies and attacks.
``--executor local`` runs the same job function through submitit's LocalExecutor.

``--retrain-unshipped`` also trains again every finished run of the grid that has no
``model.safetensors`` and no checkpoint to export it from (runs committed before models were
shipped). The new run trains, certifies and attacks in ``<run>/retrain/<run>/`` beside
the old one, which stays whole (and in the book) until then; only a finished retrain replaces it
(:func:`replace_with_retrain`), keeping the old run's numbers in ``previous.json`` so the book can
compare the two. A retrain stopped half-way resumes from its checkpoint in that folder, which can
be committed (``git add -f <run>/retrain``) to carry on later or on another machine.

``--join``: a configuration another sweep (or ``certify``) is certifying is not skipped; this
sweep certifies chunks of that certification beside it (``certify --join``), so two sweeps on one
machine, or a job array's tasks, share one long certification.

``--max-runs N`` works on at most N configurations that have something left to do (finished ones
are skipped and not counted) and then stops: a bounded piece of a long sweep that ends before a
job or an allocation does, without leaving a half-trained run behind.
"""
from __future__ import annotations

import argparse
import contextlib
import fnmatch
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import rundir
from .config import REPO_ROOT, grids, profile_config, resolve_profile
from .rundir import (CHECKPOINT, PREVIOUS, RETRAIN, epochs_done, results_dir,  # noqa: F401 (API)
                     retrain_dir, unshipped)

NOTEBOOKS = REPO_ROOT / "notebooks"


@dataclass
class Job:
    rf: int
    margin: float
    head: str = "heaviside"
    seed: int = 0
    attack_n: int | None = 1000
    profile: str | None = None   # None: the sweep's profile
    extra: dict = field(default_factory=dict)   # more TrainConfig values (a DS run's method, ...)

    def config(self, profile: str):
        """Its TrainConfig under the sweep's ``profile`` (its own profile, if it has one)."""
        return profile_config(self.profile or profile, rf=self.rf, margin=self.margin,
                              head=self.head, seed=self.seed, **self.extra)

    def name(self, profile: str) -> str:
        return self.config(profile).run_name()

    def done(self, run_dir: Path, step: str, profile: str) -> bool:
        """Whether ``step`` is done in ``run_dir``; certify: on the configuration's test_size
        (a run certified on fewer images, as its profile once asked, is certified again)."""
        if step == "certify":
            return rundir.certification_covers(run_dir, self.config(profile).test_size)
        return _done(run_dir, step)

    @property
    def steps(self) -> tuple:
        """train, certify, then the attacks: App. A.2's (attack.ipynb) for BagCert, CBN and
        Mask-BN (each with its own objective), ``attack-<name>`` for each certificate of a defense
        certified by its own analysis (DS block: DS; DS column: DS, then Mask-DS; PatchCleanser:
        :data:`bagcert_lib.rundir.ATTACKS_OF`, run by :data:`bagcert_lib.runs.DEFENSE_ATTACKS`)."""
        method = self.extra.get("method", "bagcert")
        if method in ATTACKED:
            return ("train", "certify", "attack")
        return ("train", "certify", *(f"attack-{a}" for a in rundir.ATTACKS_OF.get(method, ())))


#: The methods the sweep attacks after certifying them.
ATTACKED = ("bagcert", "cbn", "mask-bn")


def grid_jobs(grid: str = "all", attack_n: int | None = 1000, profile: str = "cpu") -> list[Job]:
    """The paper's grids from _config.yml: ``figure2`` (RF × M), ``figure8`` (heads × seeds at the
    headline RF/M), ``rf_sweep`` (RFs at the headline M), ``smoothing`` (the DS baselines), or
    ``all`` (figure2, figure8, then smoothing). The headline configuration (RF 7, M 0.5) is
    attacked on the whole test set. Under the ``cpu`` profile, ``all`` ends with the longer CPU
    headline run (``headline_long``: its own profile, attacked on ``attack_n``)."""
    g = grids()
    head_rf, head_m = g["headline"]["rf"], g["headline"]["margin"]
    jobs = [Job(head_rf, head_m)] if grid in ("headline", "all") else []
    if grid in ("figure2", "all"):
        jobs += [Job(rf, m) for rf in g["receptive_fields"] for m in g["margins"]]
    if grid in ("figure8", "all"):
        f8 = g["figure8"]
        jobs += [Job(f8["rf"], f8["margin"], head, seed) for head in f8["heads"] for seed in f8["seeds"]]
    if grid == "rf_sweep":
        jobs += [Job(rf, head_m) for rf in g["receptive_fields"]]
    if grid == "scaling":
        jobs += scaling_jobs(attack_n)
    if grid in ("smoothing", "all"):
        jobs += [Job(head_rf, head_m, extra=dict(ds)) for ds in g.get("smoothing", [])]
    if grid == "equal-compute":
        jobs += equal_compute_jobs(attack_n)
    if grid == "patchcleanser":
        jobs += [Job(head_rf, head_m, extra=dict(p)) for p in g.get("patchcleanser", [])]
    if not jobs:
        raise ValueError(f"unknown grid {grid!r}; choose figure2, figure8, rf_sweep, smoothing, "
                         "scaling, equal-compute, patchcleanser, headline or all")
    unique = {}
    for j in jobs:
        key = (j.rf, j.margin, j.head, j.seed, tuple(sorted(j.extra.items())))
        j.attack_n = None if key == (head_rf, head_m, "heaviside", 0, ()) else attack_n
        unique.setdefault(key, j)
    jobs = list(unique.values())
    long = g.get("headline_long")
    if grid == "all" and profile == "cpu" and long:
        jobs.append(Job(long["rf"], long["margin"], attack_n=attack_n, profile=long["profile"]))
    return jobs


def scaling_jobs(attack_n: int | None = 1000) -> list[Job]:
    """The compute study's runs: ``grids.scaling`` of _config.yml, each (width, epochs)
    with the paper's warmup share, at the headline RF and M."""
    s = grids()["scaling"]
    return [Job(s["rf"], s["margin"], attack_n=attack_n, profile=s["profile"],
                extra={"width": w, "epochs": e,
                       "warmup_epochs": round(e * s["warmup_fraction"], 3)})
            for w, e in s["runs"]]


def equal_compute_jobs(attack_n: int | None = 1000) -> list[Job]:
    """Every other defense at BagCert's training budgets (``grids.equal_compute`` of
    _config.yml), budget by budget (the cheaper first): the region-scorer defenses (``methods``)
    at the budget's profile and sizes, then the ResNet-18 ones (``resnet_methods``) at its
    ``resnet`` profile and sizes."""
    e = grids()["equal_compute"]
    rf, margin = e["rf"], grids()["headline"]["margin"]
    jobs = []
    for b in e["budgets"]:
        sizes = {k: v for k, v in b.items() if k not in ("profile", "flops", "resnet")}
        jobs += [Job(rf, margin, attack_n=attack_n, profile=b["profile"],
                     extra={"method": m, **sizes}) for m in e["methods"]]
        resnet = dict(b.get("resnet") or {})
        if resnet:
            profile = resnet.pop("profile", b["profile"])
            jobs += [Job(rf, margin, attack_n=attack_n, profile=profile, extra={**m, **resnet})
                     for m in e.get("resnet_methods", [])]
    return jobs


_done = rundir.step_done


def has_work(run_dir: Path, job: Job, profile: str, retrain_unshipped: bool = False) -> bool:
    """Whether :func:`run_job` would execute anything for ``job`` (what ``--max-runs`` counts)."""
    return (not all(job.done(run_dir, s, profile) for s in job.steps)
            or (retrain_unshipped and unshipped(run_dir)))


# rundir.PREVIOUS: what a retrained run keeps of the run it replaced (:func:`summarise`);
# rundir.retrain_dir: where a run is trained again (``<run>/retrain/<run>/``) until it replaces
# the old run; rundir.unshipped: a finished run with neither weights nor a checkpoint to export
# them from (committed before models were shipped): only training it again gives its weights.


def summarise(run_dir: Path) -> dict:
    """What ``previous.json`` keeps of a run that is replaced: the commit, torch and device that
    made it, its held-out metrics, every certification.csv row and the attack's summary."""
    read_json = rundir.read_json
    prov, attack = read_json(run_dir / "provenance.json"), read_json(run_dir / "attack.json")
    cert = run_dir / "certification.csv"
    return {
        "retired": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "reason": "no model.safetensors and no checkpoint.pt: trained again to ship its weights",
        "commit": prov.get("git", {}).get("commit"),
        "torch": prov.get("torch"),
        "device": prov.get("device"),
        "wall_s": prov.get("wall_s"),
        "metrics": read_json(run_dir / "metrics.json"),
        "attack": {k: attack.get(k) for k in ("n", "clean_accuracy", "adversarial_accuracy",
                                              "certified_accuracy", "certified_broken")} if attack else {},
        "certification": _csv_rows(cert) if cert.is_file() else [],
    }


def replace_with_retrain(run_dir: Path, steps=("train", "certify", "attack")) -> dict:
    """A finished retrain (:func:`retrain_dir`, every step done) replaces the run it was trained
    for: the old run is summarised in ``previous.json`` (:func:`summarise`), its files go (git
    history keeps them), the new ones move up (:func:`bagcert_lib.rundir.move_in`). Safe to call
    again after an interruption: the summary goes into the retrain folder before anything is
    deleted. Returns the summary."""
    new = retrain_dir(run_dir)
    if not all(_done(new, s) for s in steps):
        raise RuntimeError(f"{new}: the retrain has not finished ({', '.join(steps)})")
    with rundir.lock(run_dir, "replacing it by its retrain"):
        prev = new / PREVIOUS
        if not prev.is_file():               # else an earlier call stopped part-way
            rundir.write_json(prev, summarise(run_dir))
        rundir.move_in(run_dir, new)
    return rundir.read_json(run_dir / PREVIOUS)


def _csv_rows(path: Path) -> list[dict]:
    import csv

    keep = ("patch", "patch_h", "patch_w", "condition", "n", "clean_accuracy", "certified_accuracy")
    with open(path, newline="") as f:
        return [{k: r[k] for k in keep if k in r} for r in csv.DictReader(f)]


@contextlib.contextmanager
def run_lock(run_dir: Path):
    """Hold ``run_dir``'s lock (:func:`bagcert_lib.rundir.lock`) for a sweep; yields False when
    another process or thread holds it, so two sweeps started on one results folder never run
    the same configuration. The notebooks executed meanwhile write the run directory under it.
    The OS drops the lock when its holder dies: a killed sweep leaves none behind."""
    with rundir.lock(run_dir, "sweep", busy_ok=True) as me:
        yield me is not None


def run_job(job: Job, profile: str, results: Path, device: str | None, log=print,
            retrain_unshipped: bool = False, join: bool = False, **overrides):
    """Train, certify and attack one configuration through papermill (skipping finished steps).
    ``join``: a configuration another process holds while certifying it gets chunks of that
    certification certified here (:func:`bagcert_lib.runs.join_certification`) instead of being
    skipped.
    A finished run without ``model.safetensors`` gets it from its checkpoint; with
    ``retrain_unshipped``, one without a checkpoint either is trained, certified and attacked
    again in :func:`retrain_dir` (resuming a retrain found there), which then replaces it
    (:func:`replace_with_retrain`). Returns the run directory, or None when another process is
    running this configuration."""
    import papermill as pm

    # progress bars redraw every 30 s, not 10 times a second: the executed notebooks kept beside
    # each run and the sweep's log stay small (tqdm reads TQDM_* from the environment, which the
    # kernels inherit)
    os.environ.setdefault("TQDM_MININTERVAL", "30")

    # absolute: the notebooks run in notebooks/, where a relative folder would name another place
    results = Path(results).resolve()
    run_dir = results / job.name(profile)
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir) as mine:
        if not mine:
            if join and (into := _certifying(run_dir)) is not None:
                from .runs import join_certification
                saved = join_certification(into, device=device)      # a progress bar per chunk, on stderr
                log(f"[join] {run_dir.name}: certified {len(saved)} chunks of its certification "
                    f"({sum(b - a for a, b in saved):,} test images) beside "
                    f"{rundir.busy(run_dir) or 'its owner'}")
            else:
                log(f"[busy] {run_dir.name}: another process is running it; skipped")
            return None
        new = retrain_dir(run_dir)
        if new.is_dir() and all(_done(new, s) for s in job.steps):   # stopped while replacing
            _replace(run_dir, log, job.steps)
        if _done(run_dir, "train") and (run_dir / CHECKPOINT).is_file():
            from .pretrained import export_run
            from .rundir import WEIGHTS
            from .train import checkpoint_position
            if not (run_dir / WEIGHTS).is_file():
                at = checkpoint_position(run_dir)
                if not at.finished:                      # not this run's last epoch
                    into = f" and {at.step} steps" if at.step else ""
                    raise RuntimeError(f"{run_dir}: its checkpoint is at epoch {at.epochs_done}"
                                       f"{into} of {at.epochs} but metrics.json says finished; "
                                       "remove one of them")
                log(f"[ship] {run_dir.name}: {export_run(run_dir).name} from its checkpoint")
        into = run_dir
        if retrain_unshipped and unshipped(run_dir):
            into = new
            old = rundir.read_json(run_dir / rundir.PROVENANCE).get("git", {}).get("commit")
            log(f"[redo] {run_dir.name}: no weights and no checkpoint; "
                + (f"resuming its retrain in {new.relative_to(run_dir)}" if new.is_dir() else
                   f"training it again in {new.relative_to(run_dir)}")
                + f" (the run of commit {str(old)[:7]} stays until the new one is attacked)")
        params = {
            "train": dict(rf=job.rf, margin=job.margin, head=job.head, seed=job.seed,
                          profile=job.profile or profile, **job.extra, results=str(into.parent),
                          name=into.name, device=device, **overrides),
            "certify": dict(run_dir=str(into), device=device,
                            test_size=job.config(profile).test_size or "all",
                            **({"compile": True} if overrides.get("compile") else {})),
            "attack": dict(run_dir=str(into), n=job.attack_n, device=device),
        }
        for step in job.steps:
            if job.done(into, step, profile):
                log(f"[skip] {run_dir.name}: {step} done")
                continue
            into.mkdir(parents=True, exist_ok=True)
            log(f"[run ] {run_dir.name}: {step} on {device or 'default device'}")
            if step.startswith("attack-"):        # a defense's own attack, here: its record is the JSON
                from .runs import DEFENSE_ATTACKS
                DEFENSE_ATTACKS[step.removeprefix("attack-")](into, device=device)   # progress on stderr
                continue
            pm.execute_notebook(str(NOTEBOOKS / f"{step}.ipynb"), str(into / f"{step}.ipynb"),
                                parameters=params[step], cwd=str(NOTEBOOKS), progress_bar=False)
        if into == new:
            _replace(run_dir, log, job.steps)
    return run_dir


def _certifying(run_dir: Path) -> Path | None:
    """The folder (the run's, or its retrain's) whose certification is under way, if any."""
    for folder in (run_dir, retrain_dir(run_dir)):
        if rundir.Parts.join(folder) is not None:
            return folder
    return None


def _replace(run_dir: Path, log, steps) -> None:
    old = replace_with_retrain(run_dir, steps)
    log(f"[swap] {run_dir.name}: the retrained run replaces the run of commit "
        f"{str(old['commit'])[:7]} (summarised in {PREVIOUS})")


def cluster_job(job: Job, profile: str, results: str, overrides: dict) -> str | None:
    """One configuration as a submitit job (a task of it, with several tasks per job). One task:
    :func:`run_job`, as the thread scheduler does. Several: every task joins the process group
    (submitit's TorchDistributedEnvironment sets torchrun's variables) and trains; rank 0 then
    certifies and attacks. Returns the run directory (rank 0) or None."""
    import submitit

    results = Path(results)
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
        from .train import train

        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        cfg = profile_config(job.profile or profile, rf=job.rf, margin=job.margin, head=job.head,
                             seed=job.seed, **{**job.extra, **overrides})
        train(cfg, results / job.name(profile), progress=env.global_rank == 0)
        if env.global_rank != 0:
            return None
    out = run_job(job, profile, results, None, **overrides)
    return str(out) if out else None


class ClusterJob:
    """:func:`cluster_job` as the callable submitit runs, requeued with the same arguments after a
    preemption or at its time limit (submitit's checkpointing; SLURM: up to
    ``slurm_max_num_timeout`` times). The requeued job resumes from the run's last checkpoint,
    at most ``checkpoint_minutes`` of training behind."""

    def __call__(self, job: Job, profile: str, results: str, overrides: dict) -> str | None:
        return cluster_job(job, profile, results, overrides)

    def __submitit_checkpoint__(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def make_executor(kind: str, folder, gpus_per_job: int = 0, timeout_min: int = 24 * 60,
                  partition: str | None = None, cpus_per_task: int | None = None,
                  array_parallelism: int | None = None, tasks_per_job: int | None = None):
    """A submitit executor: ``local`` (LocalExecutor, this machine) or ``slurm`` (job arrays).
    ``gpus_per_job`` > 0: that many GPUs and as many tasks (one process per GPU) per job;
    ``tasks_per_job``: processes per job otherwise (CPU data parallelism over gloo)."""
    try:
        import submitit
    except ImportError:
        raise RuntimeError("--executor needs submitit: pip install -e '.[cluster]'") from None

    tasks = tasks_per_job or max(1, gpus_per_job)
    params = dict(timeout_min=timeout_min, tasks_per_node=tasks, gpus_per_node=gpus_per_job)
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
    elif kind == "slurm":
        ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
        params.update(nodes=1, name="bagcert")
        for key, value in (("slurm_partition", partition), ("cpus_per_task", cpus_per_task),
                           ("slurm_array_parallelism", array_parallelism)):
            if value is not None:
                params[key] = value
    else:
        raise ValueError(f"unknown executor {kind!r}; choose threads, local or slurm")
    ex.update_parameters(**params)
    return ex


def submit(jobs: list[Job], profile: str, results: Path, executor, wait: bool = True,
           **overrides) -> list[Path]:
    """Submit one job per configuration (a job array where the executor supports it)."""
    n = len(jobs)
    handles = executor.map_array(ClusterJob(), jobs, [profile] * n, [str(results)] * n,
                                 [overrides] * n)
    print(f"sweep: submitted {n} jobs ({', '.join(str(h.job_id) for h in handles[:3])}"
          f"{', ...' if n > 3 else ''}); logs in {executor.folder}")
    if not wait:
        return [results / j.name(profile) for j in jobs]
    done, errors = [], []
    for j, h in zip(jobs, handles):
        try:
            out = [o for o in h.results() if o]       # every task's; rank 0 names the run
            done += [Path(out[0])] if out else []
        except Exception as e:        # report every failure, then raise
            errors.append((j, e))
            print(f"[fail] {j}: {e}")
    print(f"sweep: {len(done)} done, {len(errors)} failed")
    if errors:
        raise RuntimeError(f"{len(errors)} configurations failed, first: {errors[0][0]}: {errors[0][1]}")
    return done


def estimate_grid(jobs: list[Job], profile: str, results: Path, retrain_unshipped: bool = False,
                  **overrides) -> float:
    """Print each configuration's training cost on this machine (a few timed steps each, see
    :func:`bagcert_lib.train.estimate_cost`; finished epochs excluded) and return the total s."""
    from .train import describe_cost, estimate_cost

    total = 0.0
    for j in jobs:
        cfg = profile_config(j.profile or profile, rf=j.rf, margin=j.margin, head=j.head,
                             seed=j.seed, **{**j.extra, **overrides})
        run_dir = results / cfg.run_name()
        if retrain_unshipped and unshipped(run_dir):
            run_dir = retrain_dir(run_dir)       # what the retrain has done so far
        done = epochs_done(run_dir)
        est = estimate_cost(cfg, epochs_left=max(0, cfg.epochs - done))
        total += est["seconds"]
        print(f"   {cfg.run_name()}: {est['epochs']} epochs left, {est['seconds'] / 3600:.2f} h")
    print(f"sweep: about {total / 3600:.1f} h of training on one worker here ({describe_cost(est)})")
    return total


def sweep(profile: str = "cpu", grid: str = "all", results=None, devices=None,
          attack_n: int | None = 1000, dry_run: bool = False, estimate: bool = False,
          executor=None, wait: bool = True, retrain_unshipped: bool = False,
          max_runs: int | None = None, only=None, join: bool = False, **overrides) -> list[Path]:
    """Run every job of ``grid``; one worker thread per device (None: the default device), or,
    with ``executor`` (:func:`make_executor`), one submitit job per configuration.
    ``estimate``: print what each configuration costs on this machine first (and stop if
    ``dry_run``). ``retrain_unshipped``: see :func:`run_job`. ``max_runs``: start at most this many
    configurations that have work left (:func:`has_work`), then stop. ``only``: shell patterns
    (``*w32*``); the configurations whose run names match none of them are left out. ``join``:
    help certify a configuration another process is certifying (:func:`run_job`)."""
    if max_runs is not None and max_runs < 1:
        raise ValueError(f"--max-runs must be at least 1, not {max_runs}")
    profile = resolve_profile(profile)
    results = Path(results) if results else results_dir()
    jobs = grid_jobs(grid, attack_n, profile)
    if only:
        jobs = [j for j in jobs if any(fnmatch.fnmatchcase(j.name(profile), p) for p in only)]
        if not jobs:
            raise ValueError(f"no configuration of grid {grid!r} matches {' '.join(only)}; "
                             "--dry-run without --only lists them")
    print(f"sweep: {len(jobs)} configurations, profile {profile}, results in {results}")
    if estimate:
        estimate_grid(jobs, profile, results, retrain_unshipped, **overrides)
    if dry_run:
        for j in jobs:
            run_dir = results / j.name(profile)
            redo = retrain_unshipped and unshipped(run_dir)
            so_far = epochs_done(retrain_dir(run_dir)) if redo else 0
            todo = [step for step in j.steps if not j.done(run_dir, step, profile)]
            part = rundir.certification_progress(run_dir) if "certify" in todo else None
            print("  ", j.name(profile), *(["attack n =", j.attack_n or "all"] if "attack" in j.steps else []),
                  "|", f"to do: {', '.join(todo)}" if todo else "done",
                  *([f"(epoch {epochs_done(run_dir)} of {j.config(profile).epochs})"]
                    if "train" in todo and epochs_done(run_dir) else []),
                  *([f"(certified {part[0]:,} of {part[1]:,} images so far)"] if part else []),
                  *([f"(retrain: no weights; {so_far} epochs retrained so far)" if so_far else
                     "(retrain: no weights)"] if redo else []))
        return [results / j.name(profile) for j in jobs]
    if executor is not None:
        if max_runs is not None:
            raise ValueError("--max-runs runs on this machine only (--executor threads); "
                             "a cluster array bounds itself with --array-parallelism")
        if retrain_unshipped:
            raise ValueError("--retrain-unshipped runs on this machine only (--executor threads)")
        if join:
            raise ValueError("--join runs on this machine only (--executor threads); on a cluster, "
                             "give a job array's other tasks `python -m bagcert_lib certify <run> --join`")
        return submit(jobs, profile, results, executor, wait, **overrides)
    workers = len(devices or [None])
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        # several configurations on one machine, each a process whose CPU work (training on a
        # CPU; data and augmentation beside a GPU) shares its cores: split them (oversubscribed
        # OpenMP threads are many times slower than the sum of their parts)
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        print(f"sweep: {workers} workers, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} each")
    todo: queue.Queue = queue.Queue()
    for j in jobs:
        todo.put(j)
    done, errors, lock = [], [], threading.Lock()
    started = [0]                # configurations with work left that a worker has taken on

    def worker(device):
        while True:
            try:
                job = todo.get_nowait()
            except queue.Empty:
                return
            counted = max_runs is not None and has_work(results / job.name(profile), job,
                                                        profile, retrain_unshipped)
            if counted:
                with lock:
                    if started[0] >= max_runs:
                        print(f"[stop] {job.name(profile)}: not started, --max-runs {max_runs} reached")
                        continue
                    started[0] += 1
            try:
                out = run_job(job, profile, results, device, retrain_unshipped=retrain_unshipped,
                              join=join, **overrides)
                with lock:
                    done.extend([out] if out else [])
                    if counted and out is None:      # another process had it: not ours to count
                        started[0] -= 1
            except Exception as e:  # keep the other configurations going; report at the end
                with lock:
                    errors.append((job, e))
                print(f"[fail] {job}: {e}")

    threads = [threading.Thread(target=worker, args=(d,)) for d in (devices or [None])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"sweep: {len(done)} done, {len(errors)} failed")
    if errors:
        raise RuntimeError(f"{len(errors)} configurations failed, first: {errors[0][0]}: {errors[0][1]}")
    return done


def main(argv=None):
    from .__main__ import Parser, plainly

    p = Parser(prog="python -m bagcert_lib.sweep", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--grid", default="all",
                   help="figure2 | figure8 | rf_sweep | smoothing | scaling | equal-compute | patchcleanser | headline | all")
    p.add_argument("--results", help="parent of run directories (default: results/runs)")
    p.add_argument("--devices", nargs="+", help="run one configuration per device in parallel; "
                   "'cpu cpu' runs two at once on the CPU, splitting its cores between them")
    p.add_argument("--attack-n", type=int, default=1000,
                   help="test images of App. A.2's attack per BagCert, CBN or Mask-BN model (a "
                   "defense's own attack keeps its default: 1,000 images, PatchCleanser 100)")
    p.add_argument("--epochs", type=int, help="override the profile's epochs")
    p.add_argument("--width", type=int, help="override the profile's width")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model for training and certification (a numerically "
                   "different model: see certify --compile)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the configurations, what each has left to do, and stop")
    p.add_argument("--only", nargs="+", metavar="PATTERN",
                   help="run only the configurations whose run names match a shell pattern, "
                   "e.g. '*-w32-*'")
    p.add_argument("--retrain-unshipped", action="store_true",
                   help="train again the finished runs that have no model.safetensors and no "
                   "checkpoint.pt (their old numbers go to previous.json)")
    p.add_argument("--max-runs", type=int, metavar="N",
                   help="work on at most N configurations that have something left to do, then "
                   "stop (finished ones are skipped and not counted)")
    p.add_argument("--join", action="store_true",
                   help="a configuration another process is certifying: certify chunks of its "
                   "certification beside it (certify --join) instead of skipping it")
    p.add_argument("--estimate", action="store_true",
                   help="time a few training steps per configuration and print the grid's cost")
    c = p.add_argument_group("cluster (submitit)")
    c.add_argument("--executor", choices=("threads", "local", "slurm"), default="threads",
                   help="threads: this machine, --devices (default); local / slurm: one submitit "
                   "job per configuration (slurm: a job array)")
    c.add_argument("--gpus-per-job", type=int, default=0,
                   help="GPUs per job, one DDP process each (0: one process, no GPU requested)")
    c.add_argument("--tasks-per-job", type=int,
                   help="processes per job (default: --gpus-per-job, at least 1)")
    c.add_argument("--slurm-partition")
    c.add_argument("--cpus-per-task", type=int)
    c.add_argument("--timeout-min", type=int, default=24 * 60, help="per job (default 24 h)")
    c.add_argument("--array-parallelism", type=int, help="most jobs of the array at once")
    c.add_argument("--submitit-folder", help="job logs (default: results/submitit beside the runs)")
    c.add_argument("--no-wait", action="store_true", help="submit and return (slurm)")
    plainly(_main, p.parse_args(argv))


def _main(a: argparse.Namespace) -> None:
    overrides = {k: v for k, v in (("epochs", a.epochs), ("width", a.width),
                                   ("compile", a.compile or None)) if v is not None}
    executor = None
    if a.executor != "threads" and not a.dry_run:
        results = Path(a.results) if a.results else results_dir()
        executor = make_executor(a.executor, a.submitit_folder or results.parent / "submitit",
                                 a.gpus_per_job, a.timeout_min, a.slurm_partition,
                                 a.cpus_per_task, a.array_parallelism, a.tasks_per_job)
    sweep(a.profile, a.grid, a.results, a.devices, a.attack_n, a.dry_run, a.estimate,
          executor=executor, wait=not a.no_wait, retrain_unshipped=a.retrain_unshipped,
          max_runs=a.max_runs, only=a.only, join=a.join, **overrides)


if __name__ == "__main__":
    main()
