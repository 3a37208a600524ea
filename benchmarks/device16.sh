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
