"""The gRPC front end: KServe v2's ``inference.GRPCInferenceService`` on grpcio's asyncio server.

Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer
(typed ``contents`` or ``raw_input_contents``; outputs always as ``raw_output_contents``, as
Triton answers), ModelStreamInfer, and Triton's ModelConfig, ModelStatistics and
RepositoryIndex, which perf_analyzer and tritonclient read. The other RPCs of the service
(shared memory, tracing, logging, model load/unload) answer UNIMPLEMENTED.

Handlers are registered with grpcio's generic handler from the messages in `corepipe.serve.proto`,
so no generated ``*_pb2_grpc`` module is needed.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from ..errors import InputError
from .codec import contiguous, datatype_of, select_outputs, tensor_from_bytes, tensor_from_data
from .proto import grpc_service_pb2 as pb
from .service import Service, classify

__all__ = ["SERVICE", "add_service"]

SERVICE = "inference.GRPCInferenceService"

#: KServe datatype -> the InferTensorContents field that carries it.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}
_STATUS_OF_CODE = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404,
                   "RESOURCE_EXHAUSTED": 503, "UNAVAILABLE": 503, "INTERNAL": 500}


def feeds_of(request: Any) -> dict[str, np.ndarray]:
    """The input arrays of a ModelInferRequest.

    Raises:
        InputError: raw contents that do not line up with the inputs, a datatype without a typed
            field, duplicate names, or data of the wrong size.
    """
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: "
                         "give every input raw contents, in input order, or none")
    feeds: dict[str, np.ndarray] = {}
    for i, tensor in enumerate(request.inputs):
        if tensor.name in feeds:
            raise InputError(f"input {tensor.name!r} is given twice")
        shape = list(tensor.shape)
        if raw:
            feeds[tensor.name] = tensor_from_bytes(tensor.name, tensor.datatype, shape, raw[i])
            continue
        field = _CONTENTS.get(tensor.datatype)
        if field is None:
            raise InputError(f"input {tensor.name!r}: datatype {tensor.datatype!r} travels only in "
                             "raw_input_contents")
        feeds[tensor.name] = tensor_from_data(tensor.name, tensor.datatype, shape,
                                              list(getattr(tensor.contents, field)))
    return feeds


def response_of(model: Any, request_id: str, results: dict[str, np.ndarray], names: list[str]) -> Any:
    resp = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=request_id)
    for name in names:
        arr = contiguous(results[name])
        resp.outputs.add(name=name, datatype=datatype_of(str(arr.dtype)), shape=list(arr.shape))
        resp.raw_output_contents.append(arr.tobytes())
    return resp


class _Servicer:
    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def _auth(self, context: grpc.aio.ServicerContext) -> None:
        header = next((v for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        self.svc.authorize(header if isinstance(header, str) else None)

    @staticmethod
    async def _abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
        _, code, message, retry = classify(exc)
        trailer = (("retry-after", str(int(retry + 0.999))),) if retry is not None else ()
        await context.abort(getattr(grpc.StatusCode, code), message, trailing_metadata=trailer)

    def unary(self, fn: Callable[[Any, grpc.aio.ServicerContext], Any], *, auth: bool = True) -> Any:
        async def handler(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if auth:
                    self._auth(context)
                return fn(request, context)
            except Exception as exc:
                await self._abort(context, exc)
        return handler

    async def _infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self._auth(context)
        model = self.svc.get(request.model_name, request.model_version)
        feeds = feeds_of(request)
        names = select_outputs([o.name for o in request.outputs] or None, model.outputs)
        results = await model.infer(feeds)
        return response_of(model, request.id, results, names)

    async def model_infer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        status, error = 200, None
        try:
            return await self._infer(request, context)
        except Exception as exc:
            status, error = _STATUS_OF_CODE.get(classify(exc)[1], 500), exc
        finally:
            self.svc.metrics.count(self.svc.label(request.model_name), "grpc", status)
        await self._abort(context, error)

    async def model_stream_infer(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
                                 ) -> AsyncIterator[Any]:
        """Requests on one stream run concurrently; answers come back in request order."""
        pending: collections.deque[tuple[Any, asyncio.Task[Any]]] = collections.deque()
        arrived = asyncio.Event()
        finished = False

        async def read() -> None:
            nonlocal finished
            async for req in requests:
                pending.append((req, asyncio.ensure_future(self._infer(req, context))))
                arrived.set()
            finished = True
            arrived.set()

        reader = asyncio.ensure_future(read())
        try:
            while True:
                if not pending:
                    if finished:
                        break
                    arrived.clear()
                    await arrived.wait()
                    continue
                req, task = pending.popleft()
                status = 200
                try:
                    yield pb.ModelStreamInferResponse(infer_response=await task)
                except Exception as exc:
                    status = _STATUS_OF_CODE.get(classify(exc)[1], 500)
                    yield pb.ModelStreamInferResponse(error_message=classify(exc)[2])
                finally:
                    self.svc.metrics.count(self.svc.label(req.model_name), "grpc", status)
            await reader
        finally:
            reader.cancel()
            for _, task in pending:
                task.cancel()

    # -- unary answers -------------------------------------------------------------------------
    def server_live(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    def server_ready(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=self.svc.ready())

    def model_ready(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=self.svc.get(request.name, request.version).ready)

    def server_metadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.svc.metadata(), pb.ServerMetadataResponse())

    def model_metadata(self, request: Any, context: Any) -> Any:
        return json_format.ParseDict(self.svc.get(request.name, request.version).metadata(),
                                     pb.ModelMetadataResponse())

    def model_config(self, request: Any, context: Any) -> Any:
        config = self.svc.get(request.name, request.version).config()
        return json_format.ParseDict({"config": config}, pb.ModelConfigResponse())

    def model_statistics(self, request: Any, context: Any) -> Any:
        models = [self.svc.get(request.name, request.version)] if request.name else list(self.svc.models.values())
        return json_format.ParseDict({"model_stats": [m.statistics() for m in models]}, pb.ModelStatisticsResponse())

    def repository_index(self, request: Any, context: Any) -> Any:
        rows = [r for r in self.svc.index() if not request.ready or r["state"] == "READY"]
        return json_format.ParseDict({"models": rows}, pb.RepositoryIndexResponse())


def add_service(server: grpc.aio.Server, svc: Service) -> None:
    """Register the inference service of ``svc`` on ``server``."""
    s = _Servicer(svc)

    def unary(fn: Any, req: Any, resp: Any, *, auth: bool = True) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            s.unary(fn, auth=auth), request_deserializer=req.FromString, response_serializer=resp.SerializeToString)

    handlers = {
        "ServerLive": unary(s.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse, auth=False),
        "ServerReady": unary(s.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse, auth=False),
        "ModelReady": unary(s.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
        "ServerMetadata": unary(s.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
        "ModelMetadata": unary(s.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
        "ModelConfig": unary(s.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
        "ModelStatistics": unary(s.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
        "RepositoryIndex": unary(s.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            s.model_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            s.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
