#!/usr/bin/env bash
# Regenerate corepipe/serve/proto/*_pb2.py(i) from the .proto files beside them: Triton's
# grpc_service.proto and model_config.proto (triton-inference-server/common, BSD-3), unmodified.
# The generated files are committed, so installing corepipe never needs protoc or the network.
#
# Run with a grpcio-tools whose protoc is no newer than the protobuf runtime corepipe supports
# (grpcio-tools 1.76 ships protoc 31.1 -> gencode 6.31.1; pyproject asks protobuf>=6.31.1):
#   python -m venv /tmp/gt && /tmp/gt/bin/pip install grpcio-tools==1.76.0
#   PYTHON=/tmp/gt/bin/python tools/gen_protos.sh
#
# The messages are registered in a private descriptor pool (proto/_pool.py), not protobuf's
# default one: tritonclient registers its own copy of these files under the same names, and a
# process that imports both (a test, a user's script) must not fail on duplicate symbols.
set -euo pipefail
cd "$(dirname "$0")/../corepipe/serve/proto"
"${PYTHON:-python}" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. grpc_service.proto model_config.proto
for f in grpc_service_pb2.py model_config_pb2.py; do
  sed -i -e 's/^import model_config_pb2 as model__config__pb2$/from . import model_config_pb2 as model__config__pb2/' \
         -e 's/_descriptor_pool\.Default()\.AddSerializedFile(/_POOL.AddSerializedFile(/' \
         -e 's/^from google\.protobuf\.internal import builder as _builder$/&\nfrom ._pool import POOL as _POOL/' "$f"
done
sed -i 's/^import model_config_pb2 as _model_config_pb2$/from . import model_config_pb2 as _model_config_pb2/' grpc_service_pb2.pyi
