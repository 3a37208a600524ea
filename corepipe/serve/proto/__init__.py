"""KServe v2 / Triton gRPC messages (``inference.GRPCInferenceService``), generated from the
unmodified .proto files beside this module by ``tools/gen_protos.sh`` and committed."""

from __future__ import annotations

from . import grpc_service_pb2, model_config_pb2

__all__ = ["grpc_service_pb2", "model_config_pb2"]
