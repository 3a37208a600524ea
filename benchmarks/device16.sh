#!/usr/bin/env bash
# The 16-core benchmark of issue 7 in one go: `corepipe bench --num-cores 16` for BERT-base (seq 128)
# and ResNet-50, in fp32 and bf16, every peer side by side. For the device machine (16 CPU
# cores, 128 GiB, Python 3.12, onnx and onnxruntime but no openvino); never run by CI.
#
# Prepare here once (the device machine reaches no package index), in the repository root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl openvino==2026.4.1 openvino-telemetry
# Then run it there with `.whl` carried:
#   bash benchmarks/device16.sh            # results under $OUT (or benchmarks/device16-out)
#
# Issue 8's 16-core figures, one call each (a session has ~15 minutes of device time):
#   bash benchmarks/device16.sh tune bert        # corepipe tune at K=16 against every peer, both
#   bash benchmarks/device16.sh tune resnet50    # objectives from one run, plus the capacity answer
#   bash benchmarks/device16.sh load bert        # balance="load" against ideal at 16 stages
# (add PRECISION=bf16 for bf16; each call ~4-6 minutes; results in $OUT as Markdown, JSON, PNG).
#
# Writes RESULTS-device16.md (the four sections, ready for benchmarks/RESULTS.md), one JSON and
# one log per run. About 2-4 minutes per run on 16 cores; 16 workers need 16 cores free.
set -euo pipefail
cd "$(dirname "$0")/.."

out="${OUT:-benchmarks/device16-out}"
mkdir -p "$out"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's corepipe
export PYTHONUNBUFFERED=1
python3 - <<'EOF'
import os, openvino, onnxruntime, onnx
print(f"openvino {openvino.__version__}, onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, "
      f"{len(os.sched_getaffinity(0))} cores")
EOF
grep -m1 "model name" /proc/cpuinfo || true
grep -o -w -E "avx512_bf16|amx_bf16|avx512_fp16|amx_fp16" /proc/cpuinfo | sort -u | tr '\n' ' '; echo

cores="${CORES:-16}"
what="${1:-bench}"
if [ "$what" = tune ]; then
  model="${2:-bert}"
  precision="${PRECISION:-fp32}"
  echo "== tune zoo:$model, $cores cores, $precision"
  # ~50 req/s (BERT) to ~150 (ResNet-50) here: 2 s per point is >= 100 requests.
  python3 -m corepipe tune "zoo:$model" -o "/tmp/tuned_$model" --num-cores "$cores" --precision "$precision" \
    --seconds 2 --rounds 2 --max-candidates 5 --rate 500 --p99 100ms --markdown "$out/RESULTS-device16-tune.md" \
    2>&1 | tee "$out/tune_${model}_${precision}.log"
  cp "/tmp/tuned_$model/tune.json" "$out/tune_${model}_${precision}.json"
  cp "/tmp/tuned_$model/tune.png" "$out/tune_${model}_${precision}.png"
  exit
fi
if [ "$what" = load ]; then
  model="${2:-bert}"
  echo "== bench zoo:$model --balance load, $cores cores"
  python3 -m corepipe bench "zoo:$model" --num-cores "$cores" --requests 64 --balance load \
    --precision "${PRECISION:-fp32}" --json --markdown "$out/RESULTS-device16-load.md" \
    > "$out/load_${model}.json" 2> "$out/load_${model}.log"
  tail -n 30 "$out/RESULTS-device16-load.md"
  exit
fi
for model in bert resnet50; do
  requests=$([ "$model" = bert ] && echo 160 || echo 400)
  for precision in fp32 bf16; do
    echo "== zoo:$model, $cores cores, $precision"
    python3 -m corepipe bench "zoo:$model" --num-cores "$cores" --requests "$requests" --precision "$precision" \
      --json --markdown "$out/RESULTS-device16.md" \
      > "$out/${model}_${precision}.json" 2> "$out/${model}_${precision}.log"
    tail -n 40 "$out/RESULTS-device16.md"
  done
done
echo "results: $out/RESULTS-device16.md"
