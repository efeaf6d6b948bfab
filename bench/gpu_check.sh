#!/usr/bin/env bash
# Issue 16's GPU figures in ONE run on a borrowed GPU machine (15 minutes of device time in
# all, 10 minutes per command): every part has its own time limit and the whole run stops
# starting parts at a deadline (TOTAL_S), so one slow part cannot eat the budget.
#
#   bash bench/gpu_check.sh --prepare        # here (PyPI reachable), once: .gpu/ = wheels the
#                                            # GPU image lacks (Python 3.12) + one real set
#   run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=600)   # on the GPU
#   bash bench/gpu_check.sh --merge DIR      # here: DIR = the run's files_at; JSON into
#                                            # bench/results/, new sections into BENCHMARKS.md
#   SMOKE=1 bash bench/gpu_check.sh          # the plumbing on CPU, tiny sizes, a few minutes
#
# CHECK=length (issue 14's GPU question: does the papers' training length lift the GANs over
# the no-learning references?) runs bench/quality.py on the four real sets instead, selection
# part, seed 0, at ITERATIONS (default 10000, the papers') and then at the default 250 as a
# control on the same device, data and arithmetic:
#   CHECK=length bash bench/gpu_check.sh --prepare   # .gpu/ = wheels + the four sets at half
#                                                    # size (113 MB whole; 64 MiB may travel)
#   run(command="CHECK=length bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=600)
#   CHECK=length SMOKE=1 bash bench/gpu_check.sh     # the plumbing on CPU, 4 iterations
# What comes back: $OUT/length_<iterations>_<device>.{json,md} and gpu_length_runs.tar.gz
# (every run folder without checkpoints); no --merge: copy them to bench/results/budget_study/.
# Half-size images change the 64 px inputs only by the rounding of two area resizes instead
# of one; the 250-iteration control reads the same files. Each check's --prepare replaces
# the other's .gpu/data: prepare for the check you will run.
#
# Results: $OUT (default bench/results/gpu): summary.md, gpu_check.tar.gz (the JSON files,
# the changed BENCHMARKS.md, one log per part) and status.txt (each part: ok / failed /
# timed out / skipped). Nothing in the working tree is written: the bench scripts write into
# $OUT/work through ANOMALY_GAN_BENCH_RESULTS / ANOMALY_GAN_BENCHMARKS_MD.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
export NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=offline PYTHONUNBUFFERED=1

# ----------------------------------------------------------------------------- --prepare
# Missing from the GPU image (its pip list, .library/device/KINDS.md): Hydra and
# albumentations with their dependencies. Versions = this project's venv. antlr4 4.9.3 is
# published as a source archive only, so it is built into a wheel here.
WHEELS="hydra-core==1.3.8 omegaconf==2.3.1 albumentations==2.0.8 albucore==0.0.24
pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
stringzilla==5.3.2 simsimd==6.5.16"
PREP_SET=${PREP_SET:-magnetic_tile}
LENGTH_SETS="magnetic_tile mvtec3d_tire elpv mpdd_metal_plate"

prepare() {
  local pip="${PYTHON:-.venv/bin/python} -m pip"
  mkdir -p .gpu/whl .gpu/data
  local exclude
  exclude=$(git rev-parse --git-path info/exclude) && mkdir -p "$(dirname "$exclude")"
  grep -qxF "/.gpu/" "$exclude" 2>/dev/null || echo "/.gpu/" >>"$exclude"
  local platforms="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
  # shellcheck disable=SC2086
  $pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d .gpu/whl $WHEELS || return 1
  $pip wheel -q --no-deps -w .gpu/whl antlr4-python3-runtime==4.9.3 || return 1
  if [ "${CHECK:-speed}" = length ]; then
    rm -rf .gpu/data && mkdir -p .gpu/data
    "${PYTHON:-.venv/bin/python}" bench/gpu_check_data.py ../shared/data .gpu/data $LENGTH_SETS \
      --min-side 64 || return 1
  else
    rm -rf ".gpu/data/$PREP_SET"
    cp -r "../shared/data/$PREP_SET" ".gpu/data/$PREP_SET" || return 1
  fi
  du -sh .gpu
  echo "carry=[\".gpu\"] (must stay under the 64 MiB the working tree may take)"
}

# ------------------------------------------------------------------------------- --merge
# bench/gpu_summary.py --merge: only the device's files and sections come in (names with
# "_cuda", and gpu_issue16), so a SMOKE archive can never overwrite the CPU figures.
merge() {
  "${PYTHON:-.venv/bin/python}" bench/gpu_summary.py --merge "$1" --device "${MERGE_DEVICE:-cuda}"
}

case "${1:-}" in
  --prepare) prepare; exit $? ;;
  --merge) merge "${2:?--merge needs the folder holding gpu_check.tar.gz}"; exit $? ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--prepare | --merge DIR]  (SMOKE=1: CPU plumbing)" >&2
     exit 2 ;;
esac

# ---------------------------------------------------------------------------------- run
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$OUT/work
rm -rf "$WORK" && mkdir -p "$WORK/results" "$WORK/logs"
cp BENCHMARKS.md "$WORK/BENCHMARKS.md" && cp BENCHMARKS.md "$WORK/BENCHMARKS.before.md"
export ANOMALY_GAN_BENCH_RESULTS=$WORK/results ANOMALY_GAN_BENCHMARKS_MD=$WORK/BENCHMARKS.md
STATUS=$OUT/status.txt
: >"$STATUS"
START=$(date +%s)

if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
if [ -d .gpu/whl ] && ! "$PY" -c "import hydra, albumentations" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .gpu/whl/*.whl >"$WORK/logs/wheels.log" 2>&1 \
    || { echo "wheels: failed (see logs/wheels.log)" | tee -a "$STATUS"; }
  export PYTHONPATH=/tmp/site:$REPO
else
  export PYTHONPATH=$REPO
fi
if [ -d .gpu/data ]; then DATA_ROOT=${DATA_ROOT:-$REPO/.gpu/data}; else
  DATA_ROOT=${DATA_ROOT:-$REPO/../shared/data}; fi

if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu TOTAL_S=${TOTAL_S:-900} SIZE=32 BATCH=4 STEPS="--warmup 0 --steps 1"
  FEED="--size 32 --batch 4 --max-batches 2 --warm-epochs 1 --steps 1"
  ATTN="skip_sa:64" ANOGAN="--search-steps 3 --batch 2 --size 32" PREC_SEEDS="0"
  PREC_EXTRA="-- iterations=2 data.image_size=32 data.test_limit=8"
else
  DEVICE=cuda TOTAL_S=${TOTAL_S:-570} SIZE=256 BATCH=32 STEPS="--warmup 2 --steps 5"
  FEED="--size 256 --batch 32 --warm-epochs 3 --warmup 2"
  ATTN="skip_sa:256 mife:256" ANOGAN="" PREC_SEEDS="0" PREC_EXTRA=""
fi
echo "gpu_check: device $DEVICE, deadline ${TOTAL_S} s, python $PY, data $DATA_ROOT" | tee -a "$STATUS"
[ "$DEVICE" = cuda ] && { nvidia-smi -L 2>&1 | tee -a "$STATUS"; }

# part NAME LIMIT_S COMMAND...: run under min(LIMIT_S, time left before the deadline).
part() {
  local name=$1 limit=$2 left
  shift 2
  left=$((TOTAL_S - ($(date +%s) - START)))
  if [ "$left" -lt 20 ]; then echo "$name: skipped (deadline)" | tee -a "$STATUS"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  local t0=$(date +%s) rc
  timeout -k 5 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  rc=$?
  local verdict=ok
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && verdict="timed out at ${limit} s"
  [ $rc -ne 0 ] && [ "$verdict" = ok ] && verdict="failed (exit $rc)"
  echo "$name: $verdict, $(($(date +%s) - t0)) s" | tee -a "$STATUS"
}

if [ "${CHECK:-speed}" = length ]; then
  # The question first (rows are written after every run, so a part cut by its limit keeps
  # what finished), then the control. All 8 runs share the GPU at once (each is bound by its
  # Python and kernel launches, not by the GPU); 2 data workers and 2 threads each.
  if [ "$DEVICE" = cuda ]; then TRAINER=gpu ITS=${ITERATIONS:-10000} CONTROL=250 JOBS=8; else
    TRAINER=cpu ITS=${ITERATIONS:-4} CONTROL=2 JOBS=2; fi
  LENGTH_MODELS=${LENGTH_MODELS:-ganomaly baseline}
  # A run that cannot reach ITS updates in 5 minutes stops there and still validates, picks
  # its checkpoint and tests (results.json: global_step), so a slow GPU gives shorter rows,
  # not none.
  CAP="trainer.max_time='${LENGTH_MAX_TIME:-00:00:05:00}'"
  for its in $ITS $CONTROL; do
    limit=$((its == CONTROL ? 150 : 400))
    part "length_$its" $limit "$PY" bench/quality.py --root "$DATA_ROOT" \
      --datasets $LENGTH_SETS --models $LENGTH_MODELS --seeds 0 --test-part selection \
      --jobs ${LENGTH_JOBS:-$JOBS} --threads 2 --work-dir "$WORK/runs_$its" \
      --out "$OUT/length_${its}_$DEVICE.json" -- trainer=$TRAINER iterations=$its \
      data.num_workers=2 "$CAP"
    pkill -f "train.py" 2>/dev/null && sleep 3  # runs a cut part left behind
  done
  # Every run's folder but its checkpoints: results.json, per-image scores, metrics.csv (the
  # steps a cut run reached and its seconds), the composed config.
  tar -czf "$OUT/gpu_length_runs.tar.gz" --exclude='*.ckpt' --exclude='*.onnx' -C "$WORK" \
    logs $(cd "$WORK" && ls -d runs_* 2>/dev/null)
  rm -rf "$WORK" 2>/dev/null
  echo "done in $(($(date +%s) - START)) s: $OUT/{length_*,status.txt,gpu_length_runs.tar.gz}" \
    | tee -a "$STATUS"
  exit 0
fi

# In order of what the issue needs most; the fp32 comparison goes last.
part speed_bf16_cl 170 "$PY" bench/speed.py --device $DEVICE --precision bf16-mixed \
  --channels-last --sizes $SIZE --batch $BATCH $STEPS --modes train --timeout 90
part data_feed 100 "$PY" bench/data_feed.py --device $DEVICE --precision bf16-mixed \
  --channels-last $FEED --data-root "$DATA_ROOT"
part attention_memory 60 "$PY" bench/attention_memory.py --device $DEVICE --configs $ATTN \
  --timeout 40
if [ -f bench/precision_check.py ]; then
  part precision_check 140 "$PY" bench/precision_check.py --device $DEVICE --seeds $PREC_SEEDS \
    --root "$DATA_ROOT" --work-dir "$WORK/precision_runs" \
    --out "$WORK/results/precision_$DEVICE.json" $PREC_EXTRA
else
  echo "precision_check: skipped (bench/precision_check.py not in this tree)" | tee -a "$STATUS"
fi
part anogan_speed 45 "$PY" bench/anogan_speed.py --device $DEVICE $ANOGAN
part speed_fp32 150 "$PY" bench/speed.py --device $DEVICE --sizes $SIZE --batch $BATCH $STEPS \
  --modes train --timeout 90
part summary 30 "$PY" bench/gpu_summary.py --device $DEVICE --size $SIZE --batch $BATCH

# What comes back (at most 8 files): the summary, the status, one archive of the rest.
cp "$WORK/logs/summary.log" "$OUT/summary.md" 2>/dev/null
rm -rf "$WORK/precision_runs"
tar -czf "$OUT/gpu_check.tar.gz" -C "$WORK" results logs BENCHMARKS.md BENCHMARKS.before.md
rm -rf "$WORK"
echo "done in $(($(date +%s) - START)) s: $OUT/{summary.md,status.txt,gpu_check.tar.gz}" \
  | tee -a "$STATUS"
