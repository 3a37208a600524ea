"""What `corepipe serve` is told: ports, limits, token, restart policy, and how cores are split."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..artifact.sizes import parse_duration
from ..errors import CorepipeError

__all__ = ["INPUT_FORMATS", "ServeConfig", "split_cores"]

#: Image layouts a model may declare (Triton's ModelInput.Format, less FORMAT_NONE).
INPUT_FORMATS = ("NCHW", "NHWC")


@dataclass
class ServeConfig:
    """Settings of one server. Defaults are what ``corepipe serve`` uses.

    Attributes:
        host: address both servers bind (loopback by default: expose it on purpose).
        http_port, grpc_port: ports (0: any free one; the bound ports are reported).
        backend: pipeline backend for every model (``local``, ``inline`` or ``ray``).
        address: the Ray cluster for ``ray`` (``None``: a private instance on this machine;
            ``"auto"``, ``"ray://host:port"``).
        cores: the cores models may use (default: this process's affinity).
        split: ``divide`` gives each model its own cores, in proportion to what its plan
            (stages x threads x replicas) asks; ``share`` lets every model use all of them;
            ``auto`` divides when the cores hold every model's plan, else shares.
        model_cores: per model, explicit cores (override ``split`` for that model).
        max_in_flight: requests one model's pipeline holds at once (default: the backend's).
        max_queue: requests that may wait for room in a model's pipeline beyond that; more are
            refused at once with 503 / RESOURCE_EXHAUSTED (default: 4 x max_in_flight).
        max_body_bytes: HTTP body limit (default per model, from its signature: room for every
            input in JSON at 24 characters a value, plus 1 MiB).
        token: when set, every request but the health probes needs ``Authorization: Bearer TOKEN``.
        drain_s: on SIGTERM, how long in-flight requests may take to finish.
        restart, max_deaths, death_window, backoff_s, backoff_max_s: the pipelines' restart
            policy (``backoff``: a stage that keeps dying is restarted after a growing wait and
            never given up on; see `corepipe.runtime.local`).
        max_batch: for models with a dynamic batch dim, the most rows one request may carry
            (Triton's ``max_batch_size``; default: the dim's max), and dynamic batching: waiting
            requests merged up to it (at most the dim's max) along the batch dim.
        batch_delay: how long the oldest waiting request waits for others to merge with it
            (``"500us"``, ``"2ms"``; default 0: only what is already waiting).
        stage_batch: ``local`` backend, models with a dynamic batch dim: each stage's worker
            runs the requests queued in its incoming ring as one engine call of up to this many
            rows (at most the dim's max; `corepipe.runtime.stagebatch`). None: off.
        input_formats: per model, the layout of its image inputs (``NCHW`` or ``NHWC``), shown
            as Triton's ``format`` in its model configuration (image clients read it).
        labels: per model, a label file (one class name a line) for classification answers.
    """

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    backend: str = "local"
    cores: list[int] | None = None
    split: str = "auto"
    model_cores: dict[str, list[int]] = field(default_factory=dict)
    max_in_flight: int | None = None
    max_queue: int | None = None
    max_body_bytes: int | None = None
    token: str | None = None
    drain_s: float = 30.0
    restart: str = "backoff"
    max_deaths: int = 3
    death_window: float = 60.0
    backoff_s: float = 0.5
    backoff_max_s: float = 30.0
    address: str | None = None
    max_batch: int | None = None
    batch_delay: str | float = 0.0
    stage_batch: int | None = None
    input_formats: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def check(self) -> None:
        """Raise `CorepipeError` for settings that cannot work, saying which and why."""
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                raise CorepipeError(f"--{name.replace('_', '-')} {port} is not a port: use 0-65535 (0: any free port)")
        if self.http_port == self.grpc_port and self.http_port != 0:
            raise CorepipeError(f"--http-port and --grpc-port are both {self.http_port}: give them different ports")
        if self.split not in ("auto", "divide", "share"):
            raise CorepipeError(f"--split {self.split!r} is unknown: use auto, divide or share")
        if self.backend not in ("local", "inline", "ray"):
            raise CorepipeError(f"--backend {self.backend!r} is unknown: use local, inline or ray")
        if self.address is not None and self.backend != "ray":
            raise CorepipeError(f"--address applies to --backend ray only, not {self.backend!r}")
        if self.restart not in ("backoff", "give-up"):
            raise CorepipeError(f"--restart {self.restart!r} is unknown: use backoff or give-up")
        if self.max_queue is not None and self.max_queue < 0:
            raise CorepipeError(f"--max-queue must be >= 0, got {self.max_queue}")
        if self.max_body_bytes is not None and self.max_body_bytes < 1024:
            raise CorepipeError(f"--max-body-bytes {self.max_body_bytes} is too small: allow at least 1 KiB")
        if self.max_batch is not None and self.max_batch < 1:
            raise CorepipeError(f"--max-batch must be >= 1, got {self.max_batch}")
        if self.stage_batch is not None and self.stage_batch < 1:
            raise CorepipeError(f"--stage-batch must be >= 1, got {self.stage_batch}")
        if self.stage_batch is not None and self.backend != "local":
            raise CorepipeError(f"--stage-batch batches inside the local backend's stage workers; the "
                                f"{self.backend} backend has none: drop it, or use --max-batch")
        try:
            parse_duration(self.batch_delay)
        except ValueError as exc:
            raise CorepipeError(f"--batch-delay: {exc}") from None
        for model, fmt in self.input_formats.items():
            if fmt not in INPUT_FORMATS:
                raise CorepipeError(f"--input-format {model}={fmt}: the format is NCHW or NHWC (channels first, "
                                    "or last)")
        if self.token is not None and not self.token.strip():
            raise CorepipeError("--token is empty: give a secret, or leave the flag out")
        avail = set(os.sched_getaffinity(0))
        for cores in [self.cores or [], *self.model_cores.values()]:
            bad = sorted(set(cores) - avail)
            if bad:
                raise CorepipeError(f"cores {bad} are not available to this process: it may use {sorted(avail)}")


def split_cores(
    needs: dict[str, int], pool: list[int], split: str, fixed: dict[str, list[int]] | None = None
) -> dict[str, list[int]]:
    """Cores for each model: ``fixed`` ones as given; the others from ``pool`` per ``split``.

    Args:
        needs: per model, the cores its plan asks for (stages x threads x replicas).
        pool: the cores to split.
        split: ``divide``, ``share`` or ``auto`` (see `ServeConfig`).
        fixed: per model, explicit cores.

    Returns:
        model name -> sorted core ids.

    Raises:
        CorepipeError: ``divide`` with fewer cores than models.
    """
    fixed = fixed or {}
    out = {name: sorted(cores) for name, cores in fixed.items() if name in needs}
    rest = [n for n in needs if n not in out]
    taken = {c for cores in out.values() for c in cores}
    free = [c for c in sorted(pool) if c not in taken] or sorted(pool)
    if not rest:
        return out
    want = sum(max(1, needs[n]) for n in rest)
    if split == "auto":
        split = "divide" if want <= len(free) else "share"
    if split == "share":
        return {**out, **{n: list(free) for n in rest}}
    if len(free) < len(rest):
        raise CorepipeError(
            f"--split divide needs a core per model: {len(rest)} models, {len(free)} cores "
            f"{free}; use --split share, or give models cores with --model-cores NAME=LIST"
        )
    # Largest remainder: shares in proportion to need, each at least one core.
    exact = {n: len(free) * max(1, needs[n]) / want for n in rest}
    shares = {n: max(1, int(exact[n])) for n in rest}
    for n in sorted(rest, key=lambda n: exact[n] - int(exact[n]), reverse=True):
        if sum(shares.values()) >= len(free):
            break
        shares[n] += 1
    while sum(shares.values()) > len(free):  # the at-least-one rule overshot: trim the largest
        shares[max(shares, key=lambda n: shares[n])] -= 1
    start = 0
    for n in rest:
        out[n] = free[start:start + shares[n]]
        start += shares[n]
    return out
