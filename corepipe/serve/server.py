"""Run the server: load the models, serve HTTP (uvicorn) and gRPC (grpcio asyncio) on one event
loop, and shut down cleanly.

Shutdown (SIGTERM or SIGINT): readiness turns false, both servers stop accepting (uvicorn closes
its listening socket and idle keep-alive connections; gRPC refuses new calls), requests already
accepted finish (up to ``drain_s``), then every pipeline closes (its workers exit and its shared
memory is unlinked) and `serve` returns: the process exits 0. A second signal while draining
stops waiting: what is still in flight fails and the pipelines close at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
import uvicorn

from ..errors import CorepipeError
from .config import ServeConfig
from .grpc_service import add_service
from .http import make_app
from .model import ServedModel
from .repository import load_models
from .service import Service

__all__ = ["Endpoints", "serve"]

log = logging.getLogger("corepipe.serve")


@dataclass(frozen=True)
class Endpoints:
    """Where the server listens, once it does (ports resolved when 0 was asked)."""

    host: str
    http_port: int
    grpc_port: int
    models: tuple[str, ...]
    #: whether a model generates (a decoder: OpenAI's /v1/completions is served)
    generates: bool = False

    @property
    def http_url(self) -> str:
        return f"http://{_netloc(self.host, self.http_port)}"

    @property
    def grpc_target(self) -> str:
        return _netloc(self.host, self.grpc_port)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` drains both servers on one signal."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say
    # they are TCP, and with Nagle on, uvicorn's separate header and body writes wait for the
    # client's delayed ACK: 40 ms on every keep-alive request.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise CorepipeError(f"cannot listen for HTTP on {_netloc(host, port)}: {exc.strerror}; pick "
                            "another --http-port (0: any free port) or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """While models load (no event loop yet), make SIGTERM unwind like Ctrl-C, so the pipelines
    already started are closed on the way out."""
    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def serve(path: str | Path, config: ServeConfig, *, on_ready: Callable[[Endpoints], None] | None = None) -> None:
    """Serve the artifact or repository at ``path`` until SIGTERM or SIGINT; return after a clean
    shutdown.

    Args:
        path: one artifact directory, or a directory of artifacts (one model each).
        config: ports, limits, token, restart policy, core split (`ServeConfig`).
        on_ready: called once both servers listen, with the resolved endpoints.

    Raises:
        ArtifactError: an artifact is missing or fails verification.
        CorepipeError: bad settings, a port in use, or the only model cannot start.

    Example:
        >>> serve("models/", ServeConfig(http_port=8000, grpc_port=8001))   # doctest: +SKIP
    """
    config.check()
    sock = _bind(config.host, config.http_port)
    models: list[ServedModel] = []
    try:
        with _interrupt_on_sigterm():
            models = load_models(path, config)
        asyncio.run(_run(models, config, sock, on_ready))
    except KeyboardInterrupt:
        log.warning("interrupted while starting; closing")
    finally:
        sock.close()
        for m in models:
            m.close(timeout=0)  # already closed after a clean drain: a no-op then


async def _run(models: list[ServedModel], config: ServeConfig, sock: socket.socket,
               on_ready: Callable[[Endpoints], None] | None) -> None:
    svc = Service(models, token=config.token)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        stop.set()
        if signals > 1:
            log.warning("second signal: stop waiting for in-flight requests")
            http.force_exit = True
            for m in models:
                loop.run_in_executor(None, _close_now, m)

    http = _Uvicorn(uvicorn.Config(
        make_app(svc), log_config=None, log_level="warning", access_log=False, lifespan="off",
        timeout_graceful_shutdown=max(1, int(config.drain_s)), limit_concurrency=None,
    ))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    limit = max([m.body_limit for m in models] + [4 * 2**20])
    rpc = grpc.aio.server(options=[("grpc.max_receive_message_length", limit),
                                   ("grpc.max_send_message_length", -1),
                                   ("grpc.so_reuseport", 0)])
    add_service(rpc, svc)
    grpc_port = rpc.add_insecure_port(_netloc(config.host, config.grpc_port))
    if grpc_port == 0:
        raise CorepipeError(f"cannot listen for gRPC on {_netloc(config.host, config.grpc_port)}: pick "
                            "another --grpc-port (0: any free port) or --host")
    await rpc.start()
    http_task = asyncio.ensure_future(http.serve(sockets=[sock]))
    try:
        while not http.started:
            if http_task.done():
                await http_task  # raises what stopped it
                raise CorepipeError("the HTTP server stopped while starting")
            await asyncio.sleep(0.01)
        if on_ready is not None:
            on_ready(Endpoints(config.host, sock.getsockname()[1], grpc_port, tuple(svc.models), bool(svc.decoders)))
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stopped, http_task], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    finally:
        svc.draining = True
        log.info("draining: in-flight requests finish, then the pipelines close")
        http.should_exit = True
        await asyncio.gather(rpc.stop(grace=config.drain_s), http_task, return_exceptions=True)
        svc.shm.close()  # the clients' regions: unmapped, never unlinked (they are the clients')
        await loop.run_in_executor(None, _close_all, models, config.drain_s)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


def _close_now(model: ServedModel) -> None:
    model.close(timeout=0)


def _close_all(models: list[ServedModel], timeout: float) -> None:
    for m in models:
        try:
            m.close(timeout=timeout)
        except Exception:  # one pipeline failing to close must not keep the others open
            log.exception("closing model %s failed", m.name)
