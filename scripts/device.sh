#!/usr/bin/env bash
# GPU jobs for any CUDA machine: start one in the background, come back and wait for it, and
# collect what it made in one folder ($OUT), so that a job survives a dropped connection or a
# command-length limit on the machine.
#
#   scripts/device.sh start headline   # the `gpu`-profile headline: width 384, RF 7, M 0.5, 40
#                                      # epochs; train, certify every patch shape, attack 1,000
#                                      # test images (`python -m bagcert_lib train`, runs.attack_run)
#   scripts/device.sh start retrain    # every run of a profile's grid without model.safetensors,
#                                      # trained again through the sweep's papermill notebooks
#                                      # (`sweep --retrain-unshipped`), JOBS at a time on the GPU
#   scripts/device.sh wait             # wait for the job started on this machine
#
# `start` starts the job in a process group of its own (setsid), so it outlives the command that
# started it, runs tests/test_cuda.py beside it (CUDA_TESTS=0 skips them) and waits; `wait` waits
# again. With WAIT=<seconds>, a call returns after that long even if the job still runs, and says
# so (default: when the job ends). Each call leaves in $OUT (default $WORK/out): log.txt, status.json (the
# state and every run's epochs and files), test_cuda.txt, and the finished runs without
# checkpoint.pt as run.tar.part-NN (pieces of PIECE bytes, default 15M, for tools that limit a
# file's size): headline, its run once the job has finished; retrain, every run retrained so far,
# and while it still runs progress.tar, the unfinished retrains' folders with their checkpoint.pt,
# to resume elsewhere. Unpack them into the repository:
#   cat $OUT/run.tar.part-* | tar x -C results/runs
#   tar xf $OUT/progress.tar -C results/runs      # only if a retrain did not finish
#
# Variables: PROFILE (headline: gpu; retrain: cpu), GRID (retrain: all), JOBS (retrain: 4),
# DEVICE (cuda), RESULTS (headline: $WORK/runs; retrain: results/runs), WORK
# (/tmp/bagcert-device), TRAIN_ARGS and SWEEP_ARGS (passed on), PYTHON (python3), and
# BAGCERT_DATA (the dataset; default .devdata/cifar10-jpeg.tar.gz where it exists, else the
# library's search). A copy of the tree without .git names its commit for provenance with
# BAGCERT_GIT_COMMIT=<commit>.
#
# A machine without network access: `make devdata` first (the dataset, and wheels of papermill and
# the kernel it starts for Python 3.12, into .devdata/, which `start retrain` installs when the
# machine has no papermill), and copy .devdata/ along with the tree.
#
# The headline, counted (bagcert_lib.model.conv_macs): 9.7 GMAC per 32x32 image at width 384,
# 116 PFLOP for 40 epochs, 63x cpu_long; at 150-300 TFLOP/s of bf16 convolutions, 6.5-13 minutes
# of training. Its resume checkpoint (weights + Adam, ~115 MB) stays under $WORK.
#
# Test it on a CPU (tests/test_device.py):
#   OUT=/tmp/out PROFILE=smoke DEVICE=cpu scripts/device.sh start headline
set -uo pipefail
MODE=${1:?usage: device.sh start headline|retrain, or device.sh wait}
DEVICE=${DEVICE:-cuda}
WAIT=${WAIT:-}                            # seconds into the call to stop waiting; unset: until the job ends
WORK=${WORK:-/tmp/bagcert-device}
OUT=${OUT:-$WORK/out}                     # what a call leaves for the caller
PIECE=${PIECE:-15M}                       # size of the run.tar pieces
if [ -z "${BAGCERT_DATA:-}" ] && [ -e "$PWD/.devdata/cifar10-jpeg.tar.gz" ]; then
  export BAGCERT_DATA=$PWD/.devdata/cifar10-jpeg.tar.gz
fi
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}   # bagcert_lib, also for the notebooks' kernels
PY=${PYTHON:-python3}
mkdir -p "$WORK" "$OUT"

status() {   # status.json: where the job is, for the caller to read
  "$PY" - "$1" "$JOB" "$RESULTS" "$WORK/started" > "$OUT/status.json" <<'PYEOF'
import json, pathlib, sys
state, job, results, started = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), pathlib.Path(sys.argv[4])
def epochs(run):
    hist = run / "history.csv"
    return max(0, len(hist.read_text().splitlines()) - 1) if hist.is_file() else 0
runs = sorted(p for p in results.iterdir() if p.is_dir()) if results.is_dir() else []
if job == "retrain":   # the runs the sweep has touched since `start`
    t0 = started.stat().st_mtime
    runs = [r for r in runs if any(f.stat().st_mtime >= t0 for f in r.iterdir() if f.name != ".lock")]
from bagcert_lib.sweep import retrain_dir   # the sweep's rule for where a retrain trains
def live(run):
    return retrain_dir(run) if retrain_dir(run).is_dir() else run
print(json.dumps({"state": state, "job": job, "runs": [
    {"run": r.name, "epochs_done": epochs(live(r)), "finished": (live(r) / "attack.json").is_file(),
     "files": sorted(p.name for p in live(r).iterdir())} for r in runs]}, indent=1))
PYEOF
}

pack() {     # the given run directories (names under $RESULTS), without checkpoints, in pieces
  rm -f "$OUT"/run.tar.part-*
  [ $# -gt 0 ] || return 0
  tar cf - -C "$RESULTS" --exclude checkpoint.pt --exclude .lock "$@" | split -b "$PIECE" -d - "$OUT/run.tar.part-" \
    || { rm -f "$OUT"/run.tar.part-*; return 1; }
}

retrained() {   # retrain: the runs finished since `start` (an attack.json written after it)
  find "$RESULTS" -mindepth 2 -maxdepth 2 -name attack.json -newer "$WORK/started" 2>/dev/null \
    | xargs -r -n1 dirname | xargs -r -n1 basename | sort
}

if [ "$MODE" = start ]; then
  JOB=${2:?usage: device.sh start headline|retrain}
  case $JOB in
    headline) PROFILE=${PROFILE:-gpu}; RESULTS=${RESULTS:-$WORK/runs} ;;
    retrain)  PROFILE=${PROFILE:-cpu}; RESULTS=${RESULTS:-$PWD/results/runs} ;;
    *) echo "error: the job must be headline or retrain, not '$JOB'" >&2; exit 2 ;;
  esac
  if [ -f "$WORK/pid" ] && kill -0 "$(cat "$WORK/pid")" 2>/dev/null; then
    echo "error: a job already runs on this machine (pid $(cat "$WORK/pid")); call 'wait'" >&2; exit 2
  fi
  [ -n "${TRAIN_ARGS:-}" ] || [ -z "${BAGCERT_DATA:-}" ] || [ -e "$BAGCERT_DATA" ] \
    || { echo "error: no dataset at $BAGCERT_DATA (see the header: BAGCERT_DATA, make devdata)" >&2; exit 2; }
  if [ "$JOB" = retrain ] && ! "$PY" -c "import papermill, ipykernel" 2>/dev/null; then
    ls .devdata/whl/*.whl > /dev/null 2>&1 || { echo "error: no papermill here and no wheels in .devdata/whl (pip install papermill ipykernel, or make devdata)" >&2; exit 2; }
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" .devdata/whl/*.whl \
      || { echo "error: installing .devdata/whl failed" >&2; exit 2; }
    export PYTHONPATH=$PYTHONPATH:$WORK/site
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ "$JOB" = headline ]; then
    RUN=$("$PY" -c "from bagcert_lib.config import profile_config; print(profile_config('$PROFILE', rf=7, margin=0.5).run_name())")
    CMD="$PY -m bagcert_lib train --profile $PROFILE --rf 7 --margin 0.5 --device $DEVICE --out $RESULTS --name $RUN ${TRAIN_ARGS:-} &&
      $PY -c \"from bagcert_lib.runs import attack_run; attack_run('$RESULTS/$RUN', n=1000, device='$DEVICE')\""
  else
    RUN=""                                # the sweep splits the CPU's threads among its workers
    CMD="$PY -m bagcert_lib.sweep --profile $PROFILE --grid ${GRID:-all} --retrain-unshipped --results $RESULTS \
      --devices $(printf "$DEVICE %.0s" $(seq "${JOBS:-4}")) ${SWEEP_ARGS:-}"
  fi
  rm -f "$WORK/exit"; touch "$WORK/started"
  printf '%s\n%s\n%s\n' "$JOB" "$RESULTS" "$RUN" > "$WORK/job"
  setsid bash -c "
    set -o pipefail
    { $CMD; } > $WORK/log.txt 2>&1
    echo \$? > $WORK/exit" < /dev/null > /dev/null 2>&1 &
  echo $! > "$WORK/pid"
  if [ "${CUDA_TESTS:-1}" = 1 ]; then     # tests/test_cuda.py, beside the job
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.txt" 2>&1
    echo "tests/test_cuda.py: exit $? ($(tail -n 1 "$OUT/test_cuda.txt"))"
  fi
elif [ "$MODE" != wait ]; then
  echo "error: mode must be start or wait, not '$MODE'" >&2; exit 2
elif [ ! -f "$WORK/job" ]; then
  echo "error: nothing was started on this machine ($WORK/job is missing): a fresh machine? call 'start'" >&2; exit 2
fi
{ read -r JOB; read -r RESULTS; read -r RUN; } < "$WORK/job"   # what `start` began, whatever the variables say now

while { [ -z "$WAIT" ] || [ "$SECONDS" -lt "$WAIT" ]; } && [ ! -f "$WORK/exit" ]; do   # SECONDS: since this call began
  sleep 5
done
tail -c 200000 "$WORK/log.txt" > "$OUT/log.txt" 2>/dev/null || true
if [ "$JOB" = retrain ]; then             # every call brings back what has finished so far
  pack $(retrained) || { status "packing failed"; exit 1; }
fi
if [ ! -f "$WORK/exit" ]; then
  if [ "$JOB" = retrain ]; then         # the unfinished retrains' checkpoints, to resume elsewhere
    rm -f "$OUT/progress.tar"
    ckpts=$(cd "$RESULTS" && find . -path '*/retrain/*/checkpoint.pt' -newer "$WORK/started" | xargs -r -n1 dirname)
    [ -z "$ckpts" ] || tar cf "$OUT/progress.tar" -C "$RESULTS" --exclude .lock $ckpts
  fi
  status running; tail -n 5 "$OUT/log.txt"; echo "running: call 'scripts/device.sh wait' to wait again"
  exit 0
fi
code=$(cat "$WORK/exit")
if [ "$code" != 0 ]; then
  status "failed ($code)"; tail -n 30 "$OUT/log.txt"; exit 1
fi
if [ "$JOB" = headline ]; then
  pack "$RUN" || { status "finished, but packing $RESULTS/$RUN failed"; exit 1; }
fi
status finished; tail -n 5 "$OUT/log.txt"; ls -l "$OUT"
