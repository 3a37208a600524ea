"""The gRPC front end: KServe v2's ``inference.GRPCInferenceService`` on grpcio's asyncio server.

Implemented: ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer
(typed ``contents``, ``raw_input_contents``, or a registered shared memory region per input;
outputs as ``raw_output_contents``, as Triton answers, or written to a region), ModelStreamInfer,
Triton's ModelConfig, ModelStatistics and RepositoryIndex, which perf_analyzer and tritonclient
read, and SystemSharedMemory{Status,Register,Unregister}. CUDA shared memory registration, model
load/unload, TraceSetting and LogSettings answer UNIMPLEMENTED saying what they are and that
corepipe serve does not offer them (CUDA shared memory's status lists no region and its
unregister is a no-op, as over HTTP).

Handlers are registered with grpcio's generic handler from the messages in `corepipe.serve.proto`,
so no generated ``*_pb2_grpc`` module is needed.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np
from google.protobuf import json_format

from ..errors import InputError
from .codec import (
    InferRequest,
    ShmRef,
    contiguous,
    datatype_of,
    dtype_of,
    placed_classification,
    select_outputs,
    serialize_bytes,
    shm_ref,
    tensor_from_bytes,
    tensor_from_data,
)
from .model import Rejected
from .proto import grpc_service_pb2 as pb
from .service import NOT_OFFERED, Service, classify, not_offered
from .shm import check_room, read_inputs, write_outputs

__all__ = ["SERVICE", "add_service", "request_of"]

SERVICE = "inference.GRPCInferenceService"

#: KServe datatype -> the InferTensorContents field that carries it.
_CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
}
_STATUS_OF_CODE = {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "NOT_FOUND": 404,
                   "RESOURCE_EXHAUSTED": 503, "UNAVAILABLE": 503, "INTERNAL": 500, "UNIMPLEMENTED": 501}


def _params(tensor: Any) -> dict[str, Any]:
    """A tensor's parameters map as plain values (each InferParameter's one set field)."""
    out = {}
    for key, param in tensor.parameters.items():
        which = param.WhichOneof("parameter_choice")
        out[key] = getattr(param, which) if which else None
    return out


def request_of(request: Any) -> InferRequest:
    """A ModelInferRequest decoded: the input arrays it carries, the inputs and outputs it places
    in shared memory, the outputs it asks for.

    Raises:
        InputError: raw contents that do not line up with the inputs not in shared memory, a
            datatype without a typed field, duplicate names, or data of the wrong size.
    """
    placed = {t.name: shm_ref(_params(t), f"input {t.name!r}") for t in request.inputs}
    inline = [t for t in request.inputs if placed[t.name] is None]
    raw = request.raw_input_contents
    if raw and len(raw) != len(inline):
        in_shm = len(request.inputs) - len(inline)
        raise InputError(f"raw_input_contents has {len(raw)} entries for {len(inline)} inputs"
                         + (f" ({in_shm} more are in shared memory)" if in_shm else "")
                         + ": give every input not in shared memory raw contents, in input order, or none")
    req = InferRequest(request.id or None, {})
    next_raw = 0
    for tensor in request.inputs:
        name, shape = tensor.name, list(tensor.shape)
        if name in req.feeds or name in req.shm_inputs:
            raise InputError(f"input {name!r} is given twice")
        ref = placed[name]
        if ref is not None:
            dtype_of(tensor.datatype, name)
            req.shm_inputs[name] = ShmRef(ref.region, ref.offset, ref.byte_size, tensor.datatype, tuple(shape))
            continue
        if raw:
            req.feeds[name] = tensor_from_bytes(name, tensor.datatype, shape, raw[next_raw])
            next_raw += 1
            continue
        field = _CONTENTS.get(tensor.datatype)
        if field is None:
            raise InputError(f"input {name!r}: datatype {tensor.datatype!r} travels only in "
                             "raw_input_contents")
        req.feeds[name] = tensor_from_data(name, tensor.datatype, shape, list(getattr(tensor.contents, field)))
    for out in request.outputs:
        params = _params(out)
        ref = shm_ref(params, f"output {out.name!r}")
        if ref is not None:
            req.shm_outputs[out.name] = ref
        if "classification" in params:
            req.classes[out.name] = placed_classification(out.name, params["classification"], ref)
    req.outputs = [o.name for o in request.outputs] or None
    return req


def response_of(model: Any, req: InferRequest, results: dict[str, np.ndarray], names: list[str]) -> Any:
    """The ModelInferResponse: every output listed; ``raw_output_contents`` has an entry per
    output, empty for one written to shared memory (as Triton answers)."""
    resp = pb.ModelInferResponse(model_name=model.name, model_version=model.version, id=req.id or "")
    for name in names:
        arr = contiguous(results[name])
        out = resp.outputs.add(name=name, datatype=datatype_of(str(arr.dtype)), shape=list(arr.shape))
        ref = req.shm_outputs.get(name)
        if ref is None:
            resp.raw_output_contents.append(serialize_bytes(arr) if arr.dtype == object else arr.tobytes())
            continue
        out.parameters["shared_memory_region"].string_param = ref.region
        out.parameters["shared_memory_byte_size"].int64_param = arr.nbytes
        resp.raw_output_contents.append(b"")
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
        t0 = time.perf_counter_ns()
        req = request_of(request)
        names = select_outputs(req.outputs, model.outputs)
        with self.svc.shm.lease(req.regions()) as regions:
            feeds = {**req.feeds, **read_inputs(regions, req.shm_inputs)}
            check_room(regions, req.shm_outputs, model.outputs, feeds, model.inputs)
            t1 = time.perf_counter_ns()
            results = await model.infer(feeds)
            t2 = time.perf_counter_ns()
            write_outputs(regions, req.shm_outputs, results)
        results = model.classified(results, req.classes)
        response = response_of(model, req, results, names)
        model.record_io(t1 - t0, time.perf_counter_ns() - t2)
        return response

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

    # -- shared memory ---------------------------------------------------------------------------
    def shm_status(self, request: Any, context: Any) -> Any:
        resp = pb.SystemSharedMemoryStatusResponse()
        for r in self.svc.shm.status(request.name):
            resp.regions[str(r["name"])].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**r))
        return resp

    def shm_register(self, request: Any, context: Any) -> Any:
        if not request.name:
            raise InputError("a region needs a name: set SystemSharedMemoryRegisterRequest.name")
        self.svc.shm.register(request.name, request.key, request.offset, request.byte_size)
        return pb.SystemSharedMemoryRegisterResponse()

    def shm_unregister(self, request: Any, context: Any) -> Any:
        self.svc.shm.unregister(request.name)
        return pb.SystemSharedMemoryUnregisterResponse()

    def cuda_status(self, request: Any, context: Any) -> Any:
        if request.name:
            raise Rejected(404, f"no CUDA shared memory region {request.name!r} is registered: "
                           + NOT_OFFERED["cuda_shared_memory"], code="NOT_FOUND")
        return pb.CudaSharedMemoryStatusResponse()

    def cuda_unregister(self, request: Any, context: Any) -> Any:
        return pb.CudaSharedMemoryUnregisterResponse()  # none can be registered: unregistering any is done

    @staticmethod
    def refuse(extension: str) -> Callable[[Any, Any], Any]:
        def handler(request: Any, context: Any) -> Any:
            raise not_offered(extension)
        return handler


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
        "SystemSharedMemoryStatus": unary(s.shm_status, pb.SystemSharedMemoryStatusRequest,
                                          pb.SystemSharedMemoryStatusResponse),
        "SystemSharedMemoryRegister": unary(s.shm_register, pb.SystemSharedMemoryRegisterRequest,
                                            pb.SystemSharedMemoryRegisterResponse),
        "SystemSharedMemoryUnregister": unary(s.shm_unregister, pb.SystemSharedMemoryUnregisterRequest,
                                              pb.SystemSharedMemoryUnregisterResponse),
        "CudaSharedMemoryStatus": unary(s.cuda_status, pb.CudaSharedMemoryStatusRequest,
                                        pb.CudaSharedMemoryStatusResponse),
        "CudaSharedMemoryRegister": unary(s.refuse("cuda_shared_memory"), pb.CudaSharedMemoryRegisterRequest,
                                          pb.CudaSharedMemoryRegisterResponse),
        "CudaSharedMemoryUnregister": unary(s.cuda_unregister, pb.CudaSharedMemoryUnregisterRequest,
                                            pb.CudaSharedMemoryUnregisterResponse),
        "RepositoryModelLoad": unary(s.refuse("model_repository"), pb.RepositoryModelLoadRequest,
                                     pb.RepositoryModelLoadResponse),
        "RepositoryModelUnload": unary(s.refuse("model_repository"), pb.RepositoryModelUnloadRequest,
                                       pb.RepositoryModelUnloadResponse),
        "TraceSetting": unary(s.refuse("trace"), pb.TraceSettingRequest, pb.TraceSettingResponse),
        "LogSettings": unary(s.refuse("logging"), pb.LogSettingsRequest, pb.LogSettingsResponse),
        "ModelInfer": grpc.unary_unary_rpc_method_handler(
            s.model_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelInferResponse.SerializeToString),
        "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
            s.model_stream_infer, request_deserializer=pb.ModelInferRequest.FromString,
            response_serializer=pb.ModelStreamInferResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
