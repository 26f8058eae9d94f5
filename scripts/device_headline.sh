#!/usr/bin/env bash
# The `gpu`-profile headline (width 384, RF 7, M 0.5; issue 13, item 6) on a lent GPU machine,
# within the device tool's limits: 10 minutes a command, 30 s warm between commands, at most 8
# files of 16 MiB back from $OUT, and a bare machine with no .git and no ../shared.
#
# Here, once per session (the dataset travels in .devdata/, which .gitignore names, via `carry`):
#   mkdir -p .devdata && cp ../shared/datasets/cifar10-jpeg.tar.gz .devdata/
# Then the device tool's `run`, carry [".devdata"], each call at once after the one before:
#   BAGCERT_GIT_COMMIT=<git rev-parse HEAD here> scripts/device_headline.sh start    # timeout_s 600
#   scripts/device_headline.sh wait                                                # again while it says "running"
# `start` runs tests/test_cuda.py first (never yet run on a GPU; CUDA_TESTS=0 skips it), then
# starts train + certify + attack in a process session of its own (setsid: it outlives the
# command, until the machine goes back) and waits; `wait` waits again. The loader reads the tar;
# nothing is unpacked. Each call returns log.txt and status.json (and test_cuda.txt); once the
# pipeline has finished, the run directory without checkpoint.pt as run.tar.part-NN (15 MiB
# pieces). Then, here:
#   cat <files_at>/run.tar.part-* | tar x -C results/runs
#
# What it costs, counted (bagcert_lib.model.conv_macs): 9.7 GMAC a 32x32 image at width 384,
# 116 PFLOP for 40 epochs, 63x cpu_long. At 150-300 TFLOP/s of bf16 convolutions (the H200 does
# about 790 on large matrix products) that is 6.5-13 min of training, so it may not fit one
# session's 15 minutes of device time, machine start included. The checkpoints stay under /tmp on
# the device and are lost with it: the resume checkpoint of width 384 (weights + Adam, ~115 MB)
# is more than $OUT returns (64 MiB). The weights alone are 38 MB: committed, they would take
# the tree that travels to the device past its 64 MiB.
#
# Test it on a CPU: OUT=/tmp/out PROFILE=smoke DEVICE=cpu BAGCERT_DATA=../shared/datasets/cifar10-jpeg.tar.gz \
#   scripts/device_headline.sh start          (tests/test_device_headline.py: TRAIN_ARGS, an image folder)
set -uo pipefail
MODE=${1:?usage: device_headline.sh start|wait}
PROFILE=${PROFILE:-gpu}
DEVICE=${DEVICE:-cuda}
WAIT=${WAIT:-540}                         # seconds into the call to stop waiting (10-minute commands)
WORK=${WORK:-/tmp/bagcert-device}
OUT=${OUT:?OUT is the device tool\'s folder of files to return}
export BAGCERT_DATA=${BAGCERT_DATA:-$PWD/.devdata/cifar10-jpeg.tar.gz}
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=30
PY=${PYTHON:-python3}
RESULTS=$WORK/runs
mkdir -p "$WORK" "$OUT"

status() {   # status.json: where the pipeline is, for the caller to read
  local state=$1
  "$PY" - "$state" "$RESULTS/$RUN" > "$OUT/status.json" <<'EOF'
import json, pathlib, sys
state, run = sys.argv[1], pathlib.Path(sys.argv[2])
hist = run / "history.csv"
epochs = max(0, len(hist.read_text().splitlines()) - 1) if hist.is_file() else 0
print(json.dumps({"state": state, "run": run.name, "epochs_done": epochs,
                  "files": sorted(p.name for p in run.iterdir()) if run.is_dir() else []}))
EOF
}

if [ "$MODE" = start ]; then
  if [ -f "$WORK/pid" ] && kill -0 "$(cat "$WORK/pid")" 2>/dev/null; then
    echo "error: the pipeline already runs on this machine (pid $(cat "$WORK/pid")); call 'wait'" >&2; exit 2
  fi
  [ -n "${TRAIN_ARGS:-}" ] || [ -f "$BAGCERT_DATA" ] || { echo "error: no dataset at $BAGCERT_DATA (carry .devdata; see the header)" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
  if [ "${CUDA_TESTS:-1}" = 1 ]; then     # tests/test_cuda.py, never yet run on a GPU: first
    timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py > "$OUT/test_cuda.txt" 2>&1
    echo "tests/test_cuda.py: exit $? ($(tail -n 1 "$OUT/test_cuda.txt"))"
  fi
  RUN=$("$PY" -c "from bagcert_lib.config import profile_config; print(profile_config('$PROFILE', rf=7, margin=0.5).run_name())")
  rm -f "$WORK/exit"
  setsid bash -c "
    set -o pipefail
    { $PY -m bagcert_lib train --profile $PROFILE --rf 7 --margin 0.5 --device $DEVICE --out $RESULTS --name $RUN ${TRAIN_ARGS:-} &&
      $PY -c \"from bagcert_lib.runs import attack_run; attack_run('$RESULTS/$RUN', n=1000, device='$DEVICE')\"
    } > $WORK/log.txt 2>&1
    echo \$? > $WORK/exit" < /dev/null > /dev/null 2>&1 &
  echo $! > "$WORK/pid"
  echo "$RUN" > "$WORK/run"
elif [ "$MODE" != wait ]; then
  echo "error: mode must be start or wait, not '$MODE'" >&2; exit 2
elif [ ! -f "$WORK/pid" ]; then
  echo "error: nothing was started on this machine ($WORK/pid is missing): a fresh machine? call 'start'" >&2; exit 2
fi
RUN=$(cat "$WORK/run")                    # the run that `start` began, whatever PROFILE says now

while [ "$SECONDS" -lt "$WAIT" ] && [ ! -f "$WORK/exit" ]; do   # SECONDS: since this call began
  sleep 5
done
tail -c 200000 "$WORK/log.txt" > "$OUT/log.txt" 2>/dev/null || true
if [ ! -f "$WORK/exit" ]; then
  status running; tail -n 5 "$OUT/log.txt"; echo "running: call 'scripts/device_headline.sh wait' at once"
  exit 0
fi
code=$(cat "$WORK/exit")
if [ "$code" != 0 ]; then
  status "failed ($code)"; tail -n 30 "$OUT/log.txt"; exit 1
fi
if ! tar cf - -C "$RESULTS" --exclude checkpoint.pt "$RUN" | split -b 15M -d - "$OUT/run.tar.part-"; then
  rm -f "$OUT"/run.tar.part-*; status "finished, but packing $RESULTS/$RUN failed"; exit 1
fi
status finished; tail -n 5 "$OUT/log.txt"; ls -l "$OUT"
