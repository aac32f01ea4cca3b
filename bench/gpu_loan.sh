#!/usr/bin/env bash
# A whole GPU loan in ONE `run` call carrying build/gpu (see bench/README.md): the GPU check (bench/gpu.py), then the
# 10-epoch family (bench/gpu_family.sh) with the time the call has left. One call, not two, because a lent machine
# is given back 30 s after a call returns and a fresh start costs 1-2 of the loan's 15 minutes: a second call that
# arrives late (a commit in between, a slow reply) pays a whole start again. The check comes first and may use the
# whole budget (issue 45's timings are its first steps); the family gets what is left, or is skipped, saying so,
# when less than FAMILY_MIN seconds remain (it would finish no member).
#
# What comes back under $OUT: gpu.json and gpu.log (the check), loan.log (this script's decisions and the machine),
# and the family's pipeline.log, deploy.log, gfam10.tgz and fp32.onnx.part-* (at most 8 files in all: 3 + 3 + 2
# parts of a 26 MB fp32 file).
# Overrides (tests/test_bench_gpu_loan.py runs a CPU smoke with them): BUDGET (seconds for the whole script; keep it
# under run's timeout_s), FAMILY_MIN, CHECK_ARGS (more bench/gpu.py options), DATA, WORK (the check's scratch
# folder), and the family's own (WIDTHS, SEEDS, EPOCHS, BACKENDS, EXTRA, RUNS, PYTHON).
set -o pipefail
cd "$(dirname "$0")/.." || exit
start=$(date +%s)
BUDGET=${BUDGET:-560}  # seconds: under run's 600-s limit, with room for the family's archive and the transfer
FAMILY_MIN=${FAMILY_MIN:-120}
DATA=${DATA:-build/gpu/cifar10-jpeg.tar.gz}
PYTHON=${PYTHON:-python3}
OUT=${OUT:-build/gpu-loan-out}
WORK=${WORK:-/tmp/gpuwork}
mkdir -p "$OUT" || exit
links=$(mktemp -d) && ln -s "$PWD" "$links/dawnpipe" || exit
export PYTHONPATH=$links PYTHONUNBUFFERED=1 DAWNPIPE_CACHE=${DAWNPIPE_CACHE:-/tmp/dpcache}
log() { echo "[gpu_loan] $(($(date +%s) - start)) s: $*" | tee -a "$OUT/loan.log"; }

log "budget $BUDGET s; the check first (its own step limits, and at most $((BUDGET - 15)) s in all)"
# shellcheck disable=SC2086  # CHECK_ARGS is a list of options
timeout -s INT $((BUDGET - 15)) "$PYTHON" bench/gpu.py --data "$DATA" --out "$OUT/gpu.json" --work "$WORK" \
    $CHECK_ARGS 2>&1 | tee "$OUT/gpu.log"
check=$?
log "check ended with status $check"

left=$((BUDGET - ($(date +%s) - start) - 30))  # 30 s for the family's archive, its parts and the deploy wait's end
if [ "$left" -lt "$FAMILY_MIN" ]; then
    log "family skipped: $left s left, under FAMILY_MIN=$FAMILY_MIN (a later loan: LIMIT=480 bash bench/gpu_family.sh)"
    family=skipped
else
    log "family with LIMIT=$left s"
    OUT=$OUT DATA=$DATA PYTHON=$PYTHON LIMIT=$left bash bench/gpu_family.sh
    family=$?
    log "family ended with status $family"
fi
(lscpu | grep -E 'Model name|Flags'; command -v nvidia-smi >/dev/null && nvidia-smi -L) >>"$OUT/loan.log" 2>&1
log "done: check $check, family $family"
[ "$check" -eq 0 ]
