"""N hosts on one machine: each a network namespace with its own IP, joined by a bridge, with a
Ray node in each, so a Ray cluster can be tried (and tested) as the many machines it stands for.

Host ``i`` is the namespace ``cph<pid>n<i>`` (``<pid>``: the process that made the rig), its link
the veth pair ``cph<pid>v<i>`` (on the bridge ``cph<pid>b``) and ``eth0`` (inside), its address
``10.213.0.<i + 1>`` in a /24 that exists only on that bridge: no address of it is assigned
outside the namespaces and nothing routes to it, so Ray's traffic stays between the hosts (and
each namespace's own loopback). An optional ``tbf`` caps each link's bandwidth both ways. Host 0
runs the Ray head (with fast health checks) and the driver; `Hosts.driver` moves the calling
thread into host 0's namespace and connects to the cluster there. ``hidden`` gives a host its own
view of chosen directories (an empty tmpfs over each): that host cannot see what they hold.

Teardown, whatever happens: every process in each namespace is killed (``ip netns pids``, by
PID), then the namespaces, veths and bridge are deleted by name, and what Ray's killed processes
left in ``/dev/shm`` since the rig started (named semaphores, plasma files) that no live process
holds; a rig whose maker died (a test run killed with ``kill -9``) is cleaned up by the next one.
Needs root and iproute2.

    sudo python tests/hosts.py 3 --gbit 10 -- corepipe run art/ --backend ray --address auto

runs a command on host 0 of 3 hosts (10 Gbit links) with the environment Ray needs, and tears the
rig down afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from hosts_cleanup import (
    PREFIX,
    RAY_SHM,
    SHM,
    _kill_pids,
    _netns_pids,
    _remove,
    _run,
    clean_shm,
    clean_stale,
    missing,
    shm_in_use,
    shm_names,
)

__all__ = ["Hosts", "HEALTH", "RAY_ENV", "PREFIX", "RAY_SHM", "SHM", "clean_shm", "clean_stale", "missing",
           "shm_in_use", "shm_names"]

ROOT = Path(__file__).resolve().parents[1]
SUBNET = "10.213.0"
PORT = 6379
_CLONE_NEWNET = 0x40000000
#: What every Ray process of the rig (and its driver) needs across namespaces: Ray's multi-node
#: switch (off in this test suite, on here) and token auth, everywhere the same mode (Ray enables
#: token auth for the whole process once a local instance started in it) and the same token
#: (``~/.ray/auth_token``: the rig's hosts share this machine's home).
RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_AUTH_MODE": "token",
           "RAY_USAGE_STATS_ENABLED": "0"}
TOKEN = Path.home() / ".ray" / "auth_token"
#: A silent node is declared dead after 3 missed checks 0.5 s apart, each waiting 0.5 s.
HEALTH = {"health_check_period_ms": 500, "health_check_timeout_ms": 500,
          "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}


def _setns(fd: int) -> None:
    """Move the calling thread (threads it starts later follow) into the network namespace ``fd``."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns failed")


class Hosts:
    """``n`` hosts in network namespaces, a Ray node on each (host 0: the head).

    Args:
        n: hosts (at least 1).
        cpus, memory: what each host's Ray node offers (one value for all, or one per host);
            ``memory`` is the budget `reserve_memory` counts stage weights against.
        gbit: cap every link at this many Gbit/s both ways (``tbf``); None: no cap.
        hidden: per host, directories it gets an empty view of (it cannot see their files).
        object_store: each node's object-store bytes.
        health: the head's health-check settings (see `HEALTH`).
        ray: start the Ray nodes (False: the network alone).
    """

    def __init__(self, n: int, *, cpus: int | Sequence[int] = 1, memory: int | Sequence[int] | None = None,
                 gbit: float | None = None, hidden: Mapping[int, Sequence[str | os.PathLike[str]]] | None = None,
                 object_store: int = 256 * 2**20, health: Mapping[str, int] = HEALTH, ray: bool = True) -> None:
        self.n = n
        self.cpus = [cpus] * n if isinstance(cpus, int) else list(cpus)
        self.memory = [memory] * n if memory is None or isinstance(memory, int) else list(memory)
        self.gbit = gbit
        self.hidden = {i: [str(p) for p in ps] for i, ps in (hidden or {}).items()}
        self.object_store = object_store
        self.health = dict(health)
        self.ray = ray
        self.tag = f"{PREFIX}{os.getpid()}"
        self.bridge = f"{self.tag}b"
        self.temp = f"/tmp/{self.tag}"
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * n
        self._made: tuple[list[str], list[str]] = ([], [])
        self._root_fd: int | None = None
        self._shm_before = shm_names()

    # -- names -------------------------------------------------------------------------------
    def ns(self, i: int) -> str:
        return f"{self.tag}n{i}"

    def veth(self, i: int) -> str:
        return f"{self.tag}v{i}"

    def ip(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    @property
    def address(self) -> str:
        """The head's GCS address, ``IP:PORT``."""
        return f"{self.ip(0)}:{PORT}"

    def env(self) -> dict[str, str]:
        """The environment of the rig's Ray processes (and of a driver run inside it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        old = os.environ.get("PYTHONPATH", "")
        env.update(RAY_ENV, PYTHONPATH=str(ROOT) + (os.pathsep + old if old else ""))
        return env

    # -- up and down -------------------------------------------------------------------------
    def __enter__(self) -> Hosts:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Make the namespaces and links, start the head and the nodes, wait until all joined.

        Raises:
            RuntimeError: the rig cannot be made here (`missing` says why) or a node did not join.
        """
        if why := missing():
            raise RuntimeError(why)
        clean_stale()
        self._shm_before = shm_names()
        namespaces, links = self._made
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        links.append(self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i in range(self.n):
            ns, veth = self.ns(i), self.veth(i)
            _run("ip", "netns", "add", ns)
            namespaces.append(ns)
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            links.append(veth)
            _run("ip", "link", "set", veth, "master", self.bridge, "up")
            _run("ip", "-n", ns, "addr", "add", f"{self.ip(i)}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            if self.gbit:
                self.cap(i, self.gbit)
        os.makedirs(self.temp, exist_ok=True)
        if not self.ray:
            return
        if not TOKEN.exists():
            _run(sys.executable, "-m", "ray.scripts.scripts", "get-auth-token", "--generate")
        self.procs[0] = self._start_node(0)
        self._wait_started([0])
        for i in range(1, self.n):
            self.procs[i] = self._start_node(i)
        self._wait_started(range(1, self.n))

    def _start_node(self, i: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block",
                f"--node-ip-address={self.ip(i)}", f"--num-cpus={self.cpus[i]}",
                f"--object-store-memory={self.object_store}", "--disable-usage-stats",
                f"--resources={json.dumps({f'cp_h{i}': 1})}", f"--temp-dir={self.temp}/h{i}"]
        if self.memory[i] is not None:
            argv.append(f"--memory={self.memory[i]}")
        if i == 0:
            argv += ["--head", f"--port={PORT}", "--include-dashboard=false",
                     f"--system-config={json.dumps(self.health)}"]
        else:
            argv.append(f"--address={self.address}")
        hide = "".join(f"mount -t tmpfs -o size=1m {PREFIX}hidden {d!r} && " for d in self.hidden.get(i, []))
        log = open(f"{self.temp}/host{i}.log", "wb")  # noqa: SIM115 (the child keeps it)
        with log:
            return subprocess.Popen(["ip", "netns", "exec", self.ns(i), "sh", "-c", hide + 'exec "$@"', "sh", *argv],
                                    env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd="/")

    def _wait_started(self, hosts: Sequence[int], timeout: float = 90) -> None:
        """Until each of ``hosts``'s `ray start` says its node registered with the head."""
        deadline, waiting = time.monotonic() + timeout, list(hosts)
        while waiting:
            self._check_alive()
            waiting = [i for i in waiting if "Ray runtime started." not in self.log(i, 100_000)]
            if waiting and time.monotonic() > deadline:
                raise RuntimeError(f"host {waiting[0]} did not join within {timeout:.0f} s: {self.log(waiting[0])}")
            time.sleep(0.2)

    def _check_alive(self) -> None:
        for i, p in enumerate(self.procs):
            if p is not None and p.poll() is not None:
                raise RuntimeError(f"host {i}'s `ray start` exited ({p.returncode}): {self.log(i)}")

    def log(self, i: int, chars: int = 2000) -> str:
        """The end of host ``i``'s `ray start` output."""
        try:
            return Path(f"{self.temp}/host{i}.log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def close(self) -> None:
        """Kill every process of the rig (by namespace), delete namespaces, links and files.
        Idempotent; safe after a partial start."""
        self.leave()
        namespaces, links = self._made
        _remove(os.getpid(), [ns for ns in namespaces], [ln for ln in links])
        for p in self.procs:
            if p is not None:
                with contextlib.suppress(Exception):
                    p.wait(timeout=5)
        namespaces.clear()
        links.clear()
        clean_shm(self._shm_before)

    # -- faults and caps ---------------------------------------------------------------------
    def link(self, i: int, up: bool) -> None:
        """Take host ``i``'s link down (a partition: it sends and hears nothing) or up again."""
        _run("ip", "-n", self.ns(i), "link", "set", "eth0", "up" if up else "down")

    def kill(self, i: int) -> list[int]:
        """``kill -9`` every process on host ``i`` (never this one); returns their pids."""
        pids = [p for p in _netns_pids(self.ns(i)) if p != os.getpid()]
        _kill_pids(pids)
        return pids

    def restart(self, i: int) -> None:
        """Bring host ``i`` back after a kill or a partition: its link up, whatever still runs
        there killed (a raylet Ray declared dead exits by itself when it hears so), a fresh node
        started and joined."""
        self.link(i, True)
        self.kill(i)
        p = self.procs[i]
        if p is not None:
            with contextlib.suppress(Exception):
                p.wait(timeout=10)
        self.procs[i] = self._start_node(i)
        self._wait_started([i])

    def alive(self, i: int) -> bool:
        """Whether host ``i``'s `ray start` still runs (it exits when its node dies)."""
        p = self.procs[i]
        return p is not None and p.poll() is None

    def pids(self, i: int) -> list[int]:
        return [p for p in _netns_pids(self.ns(i)) if p != os.getpid()]

    def cap(self, i: int, gbit: float | None) -> None:
        """Cap host ``i``'s link at ``gbit`` Gbit/s each way (``tbf`` on both ends), or lift it."""
        for where in (["ip", "netns", "exec", self.ns(i)], []):
            dev = "eth0" if where else self.veth(i)
            _run(*where, "tc", "qdisc", "del", "dev", dev, "root", check=False)
            if gbit:
                rate = int(gbit * 1e9)
                burst = max(rate // 8 // 1000, 128 * 1024)  # 1 ms of traffic, at least a GSO packet
                _run(*where, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate}bit",
                     "burst", str(burst), "latency", "20ms")

    # -- the driver --------------------------------------------------------------------------
    def enter(self, i: int = 0) -> None:
        """Move the calling thread into host ``i``'s namespace (`leave` moves it back)."""
        if self._root_fd is None:
            self._root_fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.ns(i)}", os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    def leave(self) -> None:
        if self._root_fd is not None:
            _setns(self._root_fd)
            os.close(self._root_fd)
            self._root_fd = None

    @contextlib.contextmanager
    def driver(self, **init: Any) -> Iterator[Any]:
        """Connected to the cluster as a driver on host 0 (this thread in its namespace, Ray's
        multi-node switch and auth mode set while connected); yields the ``ray`` module."""
        import ray
        from ray._private import ray_constants
        from ray._raylet import Config

        saved = {k: os.environ.get(k) for k in RAY_ENV}
        old_switch = ray_constants.ENABLE_RAY_CLUSTER
        self.enter(0)
        os.environ.update(RAY_ENV)
        Config.initialize("")  # Ray's C++ side reads the auth mode again from the environment
        ray_constants.ENABLE_RAY_CLUSTER = True
        try:
            ray.init(address=self.address, _node_ip_address=self.ip(0), log_to_driver=False,
                     logging_level="ERROR", namespace="corepipe",
                     runtime_env={"env_vars": {"PYTHONPATH": self.env()["PYTHONPATH"]}}, **init)
            try:
                yield ray
            finally:
                ray.shutdown()
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = old_switch
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            Config.initialize("")
            self.leave()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                usage="%(prog)s N [--gbit G] [--cpus C] [--memory BYTES] -- COMMAND...")
    p.add_argument("n", type=int, help="hosts (host 0: the head, where COMMAND runs)")
    p.add_argument("--gbit", type=float, help="cap every link at this many Gbit/s")
    p.add_argument("--cpus", type=int, default=1, help="CPUs each host's Ray node offers (default 1)")
    p.add_argument("--memory", type=int, help="memory bytes each node offers for stage weights")
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--") if "--" in argv else len(argv)
    args, command = p.parse_args(argv[:cut]), argv[cut + 1:]  # COMMAND: run on host 0
    if why := missing():
        print(f"hosts.py: {why}", file=sys.stderr)
        return 2
    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # tear the rig down on the way out

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    with Hosts(args.n, cpus=args.cpus, memory=args.memory, gbit=args.gbit) as hosts:
        print(f"{args.n} hosts up: head {hosts.address}, hosts {[hosts.ip(i) for i in range(args.n)]}",
              file=sys.stderr)
        if not command:
            return 0
        env = {**hosts.env(), "RAY_ADDRESS": hosts.address}
        return subprocess.run(["ip", "netns", "exec", hosts.ns(0), *command], env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
