#!/usr/bin/env bash
# 16-core figures for issue 8 (replicas x stages x threads, tuned) on the device machine:
# `corepipe tune` on BERT-base and ResNet-50 at K=16, the peers measured in the same run, with
# both objectives answered from the same measurements, plus `bench --balance load` at 16 stages.
#
# Run it through the device tool, one model per call (each fits in ~5 minutes of device time):
#   run(command="bash benchmarks/device16_tune.sh bert", timeout_s=420)
#   run(command="bash benchmarks/device16_tune.sh resnet50", timeout_s=420)
#   run(command="bash benchmarks/device16_tune.sh bert load", timeout_s=300)   # balance=load vs ideal
# Where openvino is needed (the engines work's peers), carry its wheel as benchmarks/device16.sh
# or the device README shows (name .whl in `carry`); this script installs .whl/*.whl if present.
# Results land in $OUT: the tune table (txt), tune.json, tune.png and a Markdown section to paste
# into benchmarks/RESULTS.md (say: 16-core device machine, Python 3.12, its onnxruntime).
set -uo pipefail
model=${1:-bert}
what=${2:-tune}
OUT=${OUT:-/tmp/device16_out}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 COLUMNS=160
nproc | tee "$OUT/cores.txt"
python3 -c "import os; print('affinity', sorted(os.sched_getaffinity(0)))" | tee -a "$OUT/cores.txt"
if [ "$what" = load ]; then
  # balance="load" against ideal (16 x one 1-thread session) at 16 stages.
  timeout 280 python3 -m corepipe bench "zoo:$model" --cores 16 --requests 64 --balance load \
    --markdown "$OUT/bench_load_$model.md" 2>&1 | tee "$OUT/bench_load_$model.txt"
  exit
fi
# BERT-base runs ~50 req/s here, ResNet-50 ~100-150: 2 s per measurement is >= 100 requests.
timeout 330 python3 -m corepipe tune "zoo:$model" -o "/tmp/tuned_$model" -k 16 --objective throughput \
  --seconds 2 --rounds 2 --max-candidates 5 --rate 500 --p99 100ms --markdown "$OUT/tune_$model.md" \
  2>&1 | tee "$OUT/tune_$model.txt"
cp "/tmp/tuned_$model/tune.json" "$OUT/tune_$model.json" 2>/dev/null
cp "/tmp/tuned_$model/tune.png" "$OUT/tune_$model.png" 2>/dev/null
