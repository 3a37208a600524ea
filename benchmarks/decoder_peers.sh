#!/usr/bin/env bash
# The decoder benchmark's peers, each in its own venv (benchmarks only: CI never builds these).
#   /tmp/corepipe-ovgenai : openvino-genai 2026.4.1.0 + openvino-tokenizers + optimum-intel 2.2.0
#                           (optimum-intel 2.2.0 wants optimum 2.3 and transformers 5; optimum-onnx 0.1.0
#                           wants transformers<4.58: they cannot share one venv)
#   /tmp/corepipe-ortgenai: onnxruntime-genai 0.18.0 (runs the optimum ONNX export directly with a
#                           hand-written genai_config.json: its builder cannot read GPT-2)
# Both are venvs over the system's packages, so the system's torch 2.13.0+cpu is used (never a new
# torch). Idempotent: a venv that already imports its packages is kept. Usage:
#   bash benchmarks/decoder_peers.sh            # both
#   bash benchmarks/decoder_peers.sh ovgenai    # one
set -u
OV="${COREPIPE_OVGENAI_VENV:-/tmp/corepipe-ovgenai}"
ORTG="${COREPIPE_ORTGENAI_VENV:-/tmp/corepipe-ortgenai}"
PIN=$(mktemp)
echo "torch==2.13.0" >"$PIN"

build_ovgenai() {
  local probe='import openvino_genai, openvino_tokenizers, optimum.exporters.openvino; from transformers import PreTrainedModel'
  if "$OV/bin/python" -c "$probe" 2>/dev/null; then
    echo "ovgenai: ok $OV"; return 0
  fi
  python -m venv --system-site-packages "$OV" || return 1
  "$OV/bin/pip" install --quiet -c "$PIN" 'openvino-genai==2026.4.1.0' 'openvino-tokenizers==2026.4.1.0' \
    'openvino==2026.4.1' 'optimum-intel==2.2.0' || return 1
  # optimum-intel pulls PyPI's torchvision, built against PyPI's (CUDA) torch: beside torch
  # 2.13.0+cpu its ops fail to load ("operator torchvision::nms does not exist") and transformers
  # then cannot import PreTrainedModel. A text model's export needs no torchvision: remove it.
  "$OV/bin/pip" uninstall --quiet -y torchvision || return 1
  "$OV/bin/python" -c "$probe" || return 1
  echo "ovgenai: ok $OV"
}

build_ortgenai() {
  if "$ORTG/bin/python" -c 'import onnxruntime_genai' 2>/dev/null; then
    echo "ortgenai: ok $ORTG"; return 0
  fi
  python -m venv --system-site-packages "$ORTG" || return 1
  "$ORTG/bin/pip" install --quiet -c "$PIN" 'onnxruntime-genai==0.18.0' || return 1
  "$ORTG/bin/python" -c 'import onnxruntime_genai' || return 1
  echo "ortgenai: ok $ORTG"
}

status=0
case "${1:-all}" in
  ovgenai) build_ovgenai || status=1 ;;
  ortgenai) build_ortgenai || status=1 ;;
  all) build_ortgenai || { echo "ortgenai: FAILED"; status=1; }
       build_ovgenai || { echo "ovgenai: FAILED"; status=1; } ;;
  *) echo "usage: $0 [all|ovgenai|ortgenai]" >&2; exit 2 ;;
esac
rm -f "$PIN"
exit $status
