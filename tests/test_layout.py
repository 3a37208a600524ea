"""The package layout shows the architecture: imports point down the layers (design.md).

    cli ─► serve / tune ─► bench ─► runtime ─► engines ─► artifact ─► errors
    tune, bench ─► compiler (candidates, the pipeline measured) ─► runtime (balance under load)
    cli ─► plots (pictures of plans and timelines) ─► runtime, artifact
    compiler ─► frontends (framework models in)

The runtime never imports the compiler, and the artifact layer imports no other package. The CLI
is a shell: no module of cli/ measures (`test_the_cli_does_not_measure`).

Inside the compiler, the same rule between its rooms (`COMPILER_ROOMS`):

    driver ─► front ─► cut ─► checks ─► model
           ─► shaping ─► cut, model
           ─► decoder ─► cut, model
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "corepipe"

#: package -> the corepipe packages it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "_version": set(),
    "artifact": {"errors", "_version"},
    "engines": {"artifact", "errors"},
    "runtime": {"engines", "artifact", "errors", "_version"},
    "frontends": {"errors"},
    "compiler": {"runtime", "engines", "artifact", "errors", "_version", "frontends"},
    "serve": {"runtime", "engines", "artifact", "errors", "_version"},
    "bench": {"compiler", "runtime", "engines", "artifact", "errors", "_version", "zoo"},
    "tune": {"bench", "compiler", "runtime", "artifact", "errors"},
    "zoo": set(),
    "plots": {"runtime", "artifact", "errors"},
}
#: Modules at the top (the public API and the CLI) may import any layer.
TOP = {"__init__", "__main__", "cli", "tensorflow"}


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _package_of(path: Path) -> str:
    return path.relative_to(PKG).parts[0].removesuffix(".py")


def _imported_packages(path: Path) -> set[str]:
    """The top-level corepipe packages that ``path`` imports, at any depth of the module."""
    return {m.split(".")[0] for m in _imported_modules(path) if not m.startswith("!")}


def _imported_modules(path: Path) -> set[str]:
    """The corepipe modules ``path`` imports, dotted below ``corepipe`` (``compiler.cut.loadbalance``;
    ``from ..bench import x`` gives ``bench.x``), and other top-level modules as ``!name``."""
    tree = ast.parse(path.read_text(), str(path))
    here = path.relative_to(PKG).with_suffix("").parts
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = list(here[:-1])
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                parts = base + (node.module.split(".") if node.module else [])
                out.update(".".join(parts + [alias.name]) if parts else alias.name for alias in node.names)
            elif node.module and node.module.split(".")[0] == "corepipe":
                parts = node.module.split(".")[1:] or ["__init__"]
                out.update(".".join(parts + [alias.name]) for alias in node.names)
            elif node.module:
                out.add("!" + node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "corepipe" and len(parts) > 1:
                    out.add(".".join(parts[1:]))
                elif parts[0] != "corepipe":
                    out.add("!" + parts[0])
    return out


#: What no module of cli/ may import: the measuring (balance under load, the peers' processes,
#: the pipeline's bench row, the tune loop's measurements) and the means to start a process.
MEASURING = ("compiler.cut.loadbalance", "bench.peers", "bench.proc", "bench.pipeline", "bench.run", "tune.measure",
             "tune.search", "runtime.process", "!subprocess", "!multiprocessing")


@pytest.mark.parametrize("path", sorted((PKG / "cli").glob("*.py")), ids=lambda p: p.name)
def test_the_cli_does_not_measure(path: Path) -> None:
    """cli/ parses flags, calls the library (`corepipe.bench`, `corepipe.tune`...) and renders:
    it never starts a peer or measures under load itself."""
    wrong = sorted(m for m in _imported_modules(path) if any(m == x or m.startswith(x + ".") for x in MEASURING))
    assert not wrong, f"cli/{path.name} imports {wrong}: measuring belongs in corepipe.bench or corepipe.tune"


def test_the_layout_check_sees_measuring_imports() -> None:
    """Guard against a parser that silently finds nothing."""
    assert "compiler.cut.loadbalance.CpuWatch" in _imported_modules(PKG / "tune" / "measure.py")
    assert "!subprocess" in _imported_modules(PKG / "bench" / "peers.py")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_imports_point_down(path: Path) -> None:
    package = _package_of(path)
    if package in TOP:
        return
    assert package in ALLOWED, f"{package!r} is a new package: add it to the layer map in this test"
    wrong = _imported_packages(path) - ALLOWED[package] - {package}
    assert not wrong, f"{path.relative_to(PKG)} ({package}) imports {sorted(wrong)}: imports must point down"


def test_packages_not_modules_at_the_top() -> None:
    """Concepts live in packages; the top level holds the public API and the error hierarchy."""
    loose = {p.name for p in PKG.glob("*.py")}
    extra = loose - {"__init__.py", "__main__.py", "_version.py", "errors.py", "tensorflow.py"}
    assert not extra, f"modules at the package's top level: {sorted(extra)}; move each into its concept's package"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PKG)))
def test_files_stay_small(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= 450, f"{path.relative_to(PKG)} has {lines} lines: split it along a concept"


def _module_of(dotted: str) -> str | None:
    """The corepipe module a dotted import name lands in (``runtime.batches.chain`` gives
    ``runtime.batches``; a package gives its ``__init__``), or None outside the package."""
    parts = dotted.split(".")
    while parts:
        if (PKG.joinpath(*parts).with_suffix(".py")).is_file():
            return ".".join(parts)
        if (PKG.joinpath(*parts) / "__init__.py").is_file():
            return ".".join(parts + ["__init__"])
        parts = parts[:-1]
    return None


def _import_graph() -> dict[str, set[str]]:
    """module -> the corepipe modules it imports (at any depth, TYPE_CHECKING blocks included:
    a circle that only type checking sees is still two modules that need each other)."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        name = ".".join(path.relative_to(PKG).with_suffix("").parts)
        targets = {_module_of(m) for m in _imported_modules(path) if not m.startswith("!")}
        # A package's __init__ imports its own modules to re-export them: that is not a circle.
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted. A package's
    ``__init__`` that only re-exports its own modules is left out of its modules' edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def edges(v: str) -> set[str]:
        # `from .x import y` inside package p resolves through p/__init__ only when y is not a
        # module; a module importing its own package's __init__ re-export is a circle in name only.
        own = v.rsplit(".", 1)[0] + ".__init__" if "." in v else "__init__"
        return {w for w in graph.get(v, set()) if not (w.endswith("__init__") and (w == own or own.startswith(w.removesuffix("__init__"))))}

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    """No two modules import each other, directly or round a longer loop: each module reads
    on its own, above the ones it needs (issue 28 found runtime/base <-> runtime/batches)."""
    circles = _circles(_import_graph())
    assert not circles, "modules that import each other (break each circle by moving what both need down): " + \
        "; ".join(" <-> ".join(c) for c in circles)


#: The compiler's rooms (its sub-packages) -> the rooms each may import, lowest first. Shape
#: machinery and decoders sit above the cut: choosing a shape mode, or a decode stage's engine,
#: times the stages the cut makes. The compiler's top modules (`driver`, which is `compile`;
#: `__init__`; `graph`, the README's path to `model.graph`) may import every room, and no room
#: imports them.
COMPILER_ROOMS: dict[str, set[str]] = {
    "model": set(),
    "checks": {"model"},
    "cut": {"model", "checks"},
    "shaping": {"cut", "model"},
    "decoder": {"cut", "model"},
    "front": {"cut"},
}
COMPILER_TOP = {"__init__", "driver", "graph"}
COMPILER = PKG / "compiler"


def _room_of(dotted: str) -> str | None:
    """The compiler room a dotted import below ``corepipe`` lands in (``compiler.cut.solver.solve``
    gives ``cut``); ``"<top>"`` for a top module of the compiler; None outside the compiler."""
    parts = dotted.split(".")
    if parts[0] != "compiler":
        return None
    return parts[1] if len(parts) > 1 and parts[1] in COMPILER_ROOMS else "<top>"


def test_the_compiler_rooms_are_declared() -> None:
    """Every sub-package of the compiler is a room with a place in the order, and its modules
    live in rooms: only the top modules sit loose in compiler/."""
    rooms = {p.parent.name for p in COMPILER.glob("*/__init__.py")}
    assert rooms == set(COMPILER_ROOMS), \
        f"compiler rooms {sorted(rooms)} != declared {sorted(COMPILER_ROOMS)}: declare each room's place in COMPILER_ROOMS"
    loose = {p.stem for p in COMPILER.glob("*.py")} - COMPILER_TOP
    assert not loose, f"compiler/{sorted(loose)} sit outside the rooms: move each into the room of its concept"


def test_the_compiler_order_has_no_circle() -> None:
    """The declared order is an order: no two rooms may import each other, round any loop."""
    assert all(deps <= set(COMPILER_ROOMS) for deps in COMPILER_ROOMS.values())
    assert not _circles(COMPILER_ROOMS), f"rooms that may import each other: {_circles(COMPILER_ROOMS)}"


@pytest.mark.parametrize("path", sorted(COMPILER.glob("*/*.py")), ids=lambda p: str(p.relative_to(COMPILER)))
def test_compiler_imports_point_down(path: Path) -> None:
    """A room imports itself and the rooms below it (`COMPILER_ROOMS`), never one above, nor
    the compiler's top modules."""
    room = path.parent.name
    wrong = sorted(m for m in _imported_modules(path) if not m.startswith("!")
                   and _room_of(m) not in (None, room) and _room_of(m) not in COMPILER_ROOMS.get(room, set()))
    assert not wrong, f"compiler/{path.relative_to(COMPILER)} ({room}) imports {wrong}: " \
        f"{room} may import only {sorted(COMPILER_ROOMS.get(room, set()))} (tests/test_layout.py COMPILER_ROOMS)"


def test_the_room_check_sees_room_imports() -> None:
    """Guard against a check that finds nothing: rooms seen through relative imports at any depth."""
    seen = {_room_of(m) for m in _imported_modules(COMPILER / "shaping" / "shapemodes.py")}
    assert {"cut", "model", "shaping"} <= seen
    assert _room_of("compiler.driver.compile") == "<top>" and _room_of("runtime.base") is None
    assert _circles({"cut": {"shaping"}, "shaping": {"cut"}}) == [["cut", "shaping"]]


def test_the_circle_check_finds_a_circle() -> None:
    """Guard against a check that finds nothing: a made-up two-module loop is one circle."""
    assert _circles({"a.x": {"a.y"}, "a.y": {"a.x"}, "a.z": {"a.x"}}) == [["a.x", "a.y"]]
    assert _module_of("runtime.batches.chain") == "runtime.batches"
