"""Runs the README's blocks as a reader would, on this 2-core machine (tests/test_readme.py says
what runs, what is swapped, and what is not run).

`steps` turns the README into an ordered list of `Step`s; a `Runner` runs them one by one in
one work directory, keeping what a step starts (a `corepipe serve`, a Ray head) for the steps
after it, and stops it all at the end.
"""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from conftest import corepipe_children, shm_segments, skip_unless_ci, wait_gone
from readme_swaps import PRELUDES, small, small_python, write_missing_models
from serving import Server, perf_analyzer

from corepipe.runtime.process import module_command

#: Shell commands not run: first word (or two) -> why.
NOT_RUN = {
    "pip": "installs packages: the suite runs in the environment it is installed in",
    "pytest": "is this test suite",
    "ray stop": "stops every Ray process of this user on the machine, others' too: the test stops its own",
}
#: Shell commands run as printed (with the swaps): first word -> what they reach.
SHELL = ("curl", "perf_analyzer")
#: perf_analyzer as a quick smoke on a shared, noisy machine: count windows, no stability wait.
PERF_ANALYZER_ARGS = ["--measurement-mode", "count_windows", "--measurement-request-count", "40",
                      "--max-trials", "3", "--stability-percentage", "100"]
@dataclass
class Block:
    """A fenced block: its language, the ``readme-test`` marker before it (kind and the rest of
    the comment), its body and the README line of its fence."""

    lang: str
    marker: str
    note: str
    body: str
    line: int


def blocks(text: str) -> list[Block]:
    pattern = r"(?:<!--\s*readme-test:\s*(\w+)\s*(.*?)\s*-->\s*\n)?```([\w-]*)\n(.*?)\n```"
    return [Block(m.group(3), m.group(1) or "", m.group(2) or "", m.group(4), text.count("\n", 0, m.start(3)) + 1)
            for m in re.finditer(pattern, text, re.S)]


@dataclass
class Step:
    """One thing the test does: ``kind`` is corepipe, shell, ray, python, errors, skip, not-run or
    unknown (a command or block the runner does not know: the test fails, asking for a marker)."""

    kind: str
    text: str
    line: int
    why: str = ""
    prelude: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        first = self.text.strip().splitlines()[0] if self.text.strip() else self.kind
        return f"L{self.line} {first[:60]}"


def _commands(body: str) -> list[str]:
    """A shell block's commands: ``\\`` continuations joined, ``$ `` prompts and ``#`` comments
    dropped, each line cut at ``&&`` and ``;`` (pipes stay in their command)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line.strip().removeprefix("$ "), posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in [*lexer, ";"]:
            if token in (";", "&&"):
                if words:
                    out.append(" ".join(w if w == "|" else shlex.quote(w) for w in words))
                words = []
            else:
                words.append(token)
    return out


def _shell_step(command: str, line: int) -> Step:
    words = shlex.split(command)
    head = words[0]
    two = " ".join(words[:2])
    if "..." in command:
        return Step("not-run", command, line, "a template: '...' stands for the values")
    if head == "corepipe":
        return Step("corepipe", shlex.join(words[: words.index("|")] if "|" in words else words), line)
    if two in NOT_RUN or head in NOT_RUN:
        return Step("not-run", command, line, NOT_RUN.get(two) or NOT_RUN[head])
    if two == "ray start":
        if any(w.startswith("--address") for w in words):
            return Step("not-run", command, line, "adds a node on another host: a multi-host cluster "
                        "(Ray 2.60 starts a second node on one host's loopback only in-process, as "
                        "tests/test_ray_cluster.py does)")
        return Step("ray", command, line)
    if head in SHELL:
        return Step("shell", command, line)
    return Step("unknown", command, line, f"a {head!r} command the README test does not know how to run: "
                "teach tests/readme_runner.py to run it, or mark its block <!-- readme-test: skip (why) -->")


def steps(text: str) -> list[Step]:
    """The README as the ordered steps the test runs (see tests/test_readme.py)."""
    out: list[Step] = []
    seen: set[str] = set()
    for b in blocks(text):
        if b.marker == "skip":
            why = b.note.strip("() ")
            out.append(Step("skip" if why else "unknown", b.body, b.line,
                            why or "a skip marker must say why: <!-- readme-test: skip (why) -->"))
        elif b.lang in ("bash", "sh", "shell", "console"):
            for command in _commands(b.body):
                step = _shell_step(command, b.line)
                if step.kind == "corepipe" and step.text in seen and "serve" not in step.text.split()[:2]:
                    continue  # a command printed twice runs once
                seen.add(step.text)
                out.append(step)
        elif b.lang == "python":
            names = re.match(r"([\w, ]+)", b.note) if b.marker == "with" else None
            prelude = [n.strip() for n in names.group(1).split(",") if n.strip()] if names else []
            unknown = [n for n in prelude if n not in PRELUDES]
            out.append(Step("unknown" if unknown else "python", b.body, b.line,
                            f"no prelude named {unknown} in tests/readme_runner.py PRELUDES" if unknown else "",
                            prelude))
        elif b.lang == "text" and b.marker == "errors":
            out.append(Step("errors", b.body, b.line))
        elif b.lang not in ("", "text"):
            out.append(Step("unknown", b.body, b.line, f"a ```{b.lang} block the README test cannot run: "
                            "mark it <!-- readme-test: skip (why) -->"))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Runner:
    """Runs `Step`s in ``workdir``; keeps the servers and the Ray head they start until `close`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.vars = {"TOKEN": f"readme-{uuid.uuid4().hex[:8]}"}
        self.servers: list[tuple[tuple[int, int], Server]] = []  # (README's http, grpc ports), server
        self.ports: dict[int, int] = {}  # README's port -> the real one
        self.ray_mark = f"readme-{uuid.uuid4().hex}"  # in the environment of every Ray process we start
        self.ray_address: str | None = None
        self.shm_before = shm_segments()

    # -- text swaps -------------------------------------------------------------------------------
    def swap(self, text: str) -> str:
        """Ports the README names -> the ports really in use; ``$VAR``s; ``HEAD_IP`` -> loopback."""
        text = re.sub(r"\$\{?(\w+)\}?", lambda m: self.vars.get(m.group(1), m.group(0)), text)
        text = text.replace("HEAD_IP", "127.0.0.1")
        return re.sub(r"\b(localhost|127\.0\.0\.1):(\d+)\b",
                      lambda m: f"{m.group(1)}:{self.ports.get(int(m.group(2)), m.group(2))}", text)

    def env(self) -> dict[str, str]:
        _, env = module_command("corepipe")
        env.update(self.vars)
        env["COLUMNS"] = "120"
        if self.ray_address:  # the README's cluster, which `address="auto"` then joins
            env.update(RAY_ADDRESS=self.ray_address, RAY_AUTH_MODE="disabled")
        return env

    # -- steps ------------------------------------------------------------------------------------
    def corepipe(self, step: Step) -> None:
        args = small(self.swap(step.text))
        if args[0] == "serve":
            self._serve(args)
            return
        write_missing_models(args, self.workdir)
        argv, _ = module_command("corepipe", *args)
        done = subprocess.run(argv, cwd=self.workdir, env=self.env(), capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"{step.text}\n(ran as corepipe {shlex.join(args)})\n{done.stdout}\n{done.stderr}"
        for i, word in enumerate(args[:-1]):
            if word in ("--plot", "--timeline", "--save", "--markdown"):
                assert (self.workdir / args[i + 1]).is_file(), f"{step.text} did not write {args[i + 1]}"

    def _serve(self, args: list[str]) -> None:
        """Start ``corepipe serve`` on free ports, mapping the README's ones (8000/8001 unless
        given) to them; a server already on those README ports is stopped first (exit 0)."""
        rest, wanted = [], {"--http-port": 8000, "--grpc-port": 8001}
        it = iter(args[1:])
        for word in it:
            flag, _, value = word.partition("=")
            if flag in wanted:
                wanted[flag] = int(value or next(it))
            else:
                rest.append(word)
        key = (wanted["--http-port"], wanted["--grpc-port"])
        for old_key, old in list(self.servers):
            if set(old_key) & set(key):
                self._stop(old)
                self.servers.remove((old_key, old))
        path = self.workdir / rest[0]
        server = Server.start(path, *rest[1:])
        self.servers.append((key, server))
        self.ports[key[0]] = int(server.http.rsplit(":", 1)[1])
        self.ports[key[1]] = int(server.grpc.rsplit(":", 1)[1])

    @staticmethod
    def _stop(server: Server) -> None:
        code = server.stop()
        assert code == 0, "corepipe serve did not exit 0 on SIGTERM:\n" + "\n".join(server.lines)
        assert server.shm() == set(), "corepipe serve left shared memory behind"

    def shell(self, step: Step) -> None:
        command = self.swap(step.text)
        env = self.env()
        words = shlex.split(command)
        if words[0] == "perf_analyzer":
            binary, pa_env, why = perf_analyzer()
            if binary is None:
                skip_unless_ci(why)
            env.update({"LD_LIBRARY_PATH": pa_env["LD_LIBRARY_PATH"]})
            command = shlex.quote(str(binary)) + " " + shlex.join(PERF_ANALYZER_ARGS) + command[len("perf_analyzer"):]
        elif words[0] == "curl":  # an HTTP error fails the step
            command = "curl --fail-with-body" + command[len("curl"):]
        done = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.workdir, env=env,
                              capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{step.text}\n(ran as {command})\n{done.stdout}\n{done.stderr}"

    def ray(self, step: Step) -> None:
        """``ray start --head``: a head node on the loopback (its port free, its files in a
        private temp dir), which later steps join through RAY_ADDRESS (``--address auto``)."""
        words = shlex.split(self.swap(step.text))
        port = free_port()
        out = []
        for word in words:
            flag, _, value = word.partition("=")
            if flag == "--port":
                self.ports[int(value)] = port
                word = f"--port={port}"
            out.append(word)
        temp = self.workdir / "ray"
        temp.mkdir(exist_ok=True)
        out += ["--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--disable-usage-stats",
                "--include-dashboard=false"]
        # One node on the loopback ("0": Ray's own switch for that); no token auth, which
        # `ray start --head` turns on by default and would need a token file shared with drivers.
        env = {**self.env(), "COREPIPE_README_RAY": self.ray_mark, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
               "RAY_AUTH_MODE": "disabled"}
        done = subprocess.run(out, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=180,
                              check=False)
        assert done.returncode == 0, f"{step.text}\n(ran as {shlex.join(out)})\n{done.stdout}\n{done.stderr}"
        self.ray_address = f"127.0.0.1:{port}"

    def python(self, step: Step) -> None:
        code = small_python(self.swap("".join(PRELUDES[name] for name in step.prelude) + step.text))
        write_missing_models(re.findall(r'"([\w./-]+\.onnx)"', code), self.workdir)
        script = self.workdir / f"readme_L{step.line}.py"
        script.write_text(code)
        argv, _ = module_command("corepipe")
        argv = argv[: argv.index("-m")] + [str(script)]
        done = subprocess.run(argv, cwd=self.workdir, env=self.env(), capture_output=True, text=True,
                              timeout=300, check=False)
        assert done.returncode == 0, f"README block at line {step.line}:\n{code}\n{done.stdout}\n{done.stderr}"

    # -- what is left ---------------------------------------------------------------------------
    def check_no_leaks(self) -> None:
        """No worker process or shared memory left by a step (those of the servers still up aside)."""
        serving = {s.proc.pid for _, s in self.servers}
        ours = []
        for child in corepipe_children():
            try:
                if not {p.pid for p in child.parents()} & serving:
                    ours.append(child.pid)
            except psutil.Error:
                pass
        assert wait_gone(ours) == [], f"worker processes left behind: {ours}"
        deadline = time.monotonic() + 5
        while self._new_shm(serving) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self._new_shm(serving) == set(), f"shared memory left behind: {self._new_shm(serving)}"

    def _new_shm(self, serving: set[int]) -> set[str]:
        return {n for n in shm_segments() - self.shm_before if int(n.split("_")[1]) not in serving}

    def ray_processes(self) -> list[psutil.Process]:
        out = []
        for proc in psutil.process_iter():
            try:
                if proc.environ().get("COREPIPE_README_RAY") == self.ray_mark:
                    out.append(proc)
            except psutil.Error:
                pass
        return out

    def close(self) -> None:
        """Stop the servers (SIGTERM: each must exit 0 and leave no shared memory) and the Ray
        processes this run started (found by the mark in their environment, never by name)."""
        try:
            for _, server in self.servers:
                self._stop(server)
        finally:
            for _, server in self.servers:
                server.kill()
            self.servers.clear()
            procs = self.ray_processes()
            for proc in procs:
                try:
                    proc.send_signal(signal.SIGTERM)
                except psutil.Error:
                    pass
            _, alive = psutil.wait_procs(procs, timeout=3)  # the raylet's workers linger: not for long
            for proc in alive:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(alive, timeout=10)
            shutil.rmtree(self.workdir / "ray", ignore_errors=True)
