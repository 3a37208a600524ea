"""Every block of the README runs as printed, on 2 cores, in README order, in one temporary
directory (later blocks use what earlier ones wrote, and talk to the servers they started).

What runs (tests/readme_runner.py):

- ```` ```bash ```` blocks, command by command (a line, or each part of it joined by ``&&`` or
  ``;``, with ``\\`` continuations joined and ``#`` comments dropped):
  - ``corepipe ...`` as ``python -m corepipe ...`` in its own process (cut at a ``|``). Files it
    is asked to write (``--plot``, ``--timeline``, ``--save``, ``--markdown``) must exist after it.
    ``corepipe serve`` starts a real server, kept up for the blocks after it until a later
    ``serve`` takes its ports or the README ends; then SIGTERM, and it must exit 0 and leave no
    shared memory.
  - ``curl`` (with ``--fail-with-body``: an HTTP error fails) and ``perf_analyzer`` against those
    servers, pipes included, under bash's ``pipefail``. Without perf_analyzer the step skips
    saying how to install it; with ``CI=true`` it fails.
  - ``ray start --head``: a head node on the loopback, which later steps join through
    ``RAY_ADDRESS`` (``--address auto``, ``address="auto"``); stopped at the end by the mark in
    its processes' environment.
  - Not run, each saying why (`NOT_RUN`): ``pip``, ``pytest`` (the set-up commands), ``ray
    start --address`` (a node on another host), ``ray stop``, commands with ``...`` (templates).
  - Any other command fails the test until the runner learns it or its block is marked.
- ```` ```python ```` blocks, each as a script in its own process. Names a block uses without
  defining them come from the preludes its marker names, ``<!-- readme-test: with bert -->``
  (`readme_swaps.PRELUDES`: ``model, feeds`` of zoo BERT; small torch and transformers modules; a SavedModel
  with ResNet-50's signature).
- ```` ```text ```` blocks marked ``<!-- readme-test: errors -->``: every line is the text of an
  error corepipe really raises (`readme_swaps.real_errors`), so a quoted message cannot drift.
- A block marked ``<!-- readme-test: skip (why) -->`` is skipped saying why: only for what needs
  16 cores or several hosts. Blocks with no language (diagrams) are prose.

What is swapped, the only changes, so that it runs in a few minutes here:

- `SMALL`: the big built-in models become small ones of the same kind (``zoo:bert`` ->
  ``zoo:mlp``...), in commands and in Python (``zoo.get("bert")``, ``"zoo:resnet50"``, and
  ResNet-50's input shape for tiny_cnn's); ``demo`` runs ``--model tiny_cnn``; an ``.onnx`` file a
  command or a Python block reads that no earlier step wrote is written by the test (a one-layer BERT when its name
  says ``bert``, else the MLP); Neuron's ``--num-neuroncores 16`` in Python becomes 2.
- The ports the README names (8000, 8001, 8080, 8081, 6379) become free ones, ``HEAD_IP`` the
  loopback, ``$TOKEN`` a token; perf_analyzer measures in count windows (`PERF_ANALYZER_ARGS`).

The memory verdict the model swap would hide is checked on the real model instead: every
``--core-memory`` / ``core_memory=`` the README gives a swapped model must hold that model
(`test_core_memory_in_the_readme_fits_the_real_model`: BERT-base in 128 MiB).
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from readme_runner import Runner, Step, blocks, steps
from readme_swaps import SMALL, real_errors, small, small_python

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text()
STEPS = steps(TEXT)


def test_the_readme_has_steps_to_run() -> None:
    """Guard against a parser that silently finds nothing."""
    kinds = [s.kind for s in STEPS]
    assert kinds.count("corepipe") >= 10 and kinds.count("python") >= 4, kinds
    assert {"shell", "ray", "errors"} <= set(kinds), kinds
    commands = {shlex.split(s.text)[1] for s in STEPS if s.kind == "corepipe"}
    assert commands >= {"demo", "compile", "inspect", "run", "bench", "serve", "tune"}, commands


def test_step_extraction() -> None:
    text = (
        "```bash\npip install . && corepipe demo   # first\n"
        "corepipe inspect out/ --json | jq .stages\n"
        "corepipe run out/ \\\n  --requests 5; curl -s localhost:8000/metrics | grep corepipe_\n"
        "curl -X POST localhost:8000/v1 -d '{\"instances\": [...]}'\nray start --head --port=6379\n"
        "ray start --address=HEAD_IP:6379\nmake all\n```\n"
        "<!-- readme-test: skip (needs 16 cores) -->\n```bash\ncorepipe run out/ -b ray\n```\n"
        "<!-- readme-test: skip -->\n```bash\ncorepipe run out/\n```\n"
        "<!-- readme-test: with bert -->\n```python\nprint(feeds)\n```\n"
        "<!-- readme-test: errors -->\n```text\nno core count fits\n```\n```\ndiagram\n```\n```rust\nfn\n```\n"
    )
    got = [(s.kind, s.text if s.kind != "python" else s.prelude) for s in steps(text)]
    assert got == [
        ("not-run", "pip install ."), ("corepipe", "corepipe demo"), ("corepipe", "corepipe inspect out/ --json"),
        ("corepipe", "corepipe run out/ --requests 5"), ("shell", "curl -s localhost:8000/metrics | grep corepipe_"),
        ("not-run", "curl -X POST localhost:8000/v1 -d '{\"instances\": [...]}'"),
        ("ray", "ray start --head --port=6379"), ("not-run", "ray start --address=HEAD_IP:6379"),
        ("unknown", "make all"), ("skip", "corepipe run out/ -b ray"), ("unknown", "corepipe run out/"),
        ("python", ["bert"]), ("errors", "no core count fits"), ("unknown", "fn"),
    ]
    assert small("corepipe demo --model bert") == ["demo", "--model", "tiny_cnn"]
    assert small("corepipe bench zoo:resnet50 -n 2") == ["bench", "zoo:tiny_cnn", "-n", "2"]
    assert small_python('zoo.get("bert"); bench("zoo:resnet50"); np.zeros([1, 3, 224, 224])') == \
        'zoo.get("mlp"); bench("zoo:tiny_cnn"); np.zeros([1, 3, 32, 32])'
    runner = Runner(Path("."))
    runner.ports = {8001: 41234}
    assert runner.swap("-u 127.0.0.1:8001 --token $TOKEN HEAD_IP:7") == \
        f"-u 127.0.0.1:41234 --token {runner.vars['TOKEN']} 127.0.0.1:7"


def test_no_block_is_left_unrunnable() -> None:
    """Every command and block is run, or says why not (a marker with its reason, or `NOT_RUN`)."""
    unknown = [f"README line {s.line}: {s.text.strip()[:80]!r}: {s.why}" for s in STEPS if s.kind == "unknown"]
    assert unknown == [], "\n".join(unknown)
    skipped = [b.note for b in blocks(TEXT) if b.marker == "skip"]
    # The reasons a block may not run here: more cores, root-made hosts, or installing packages (as `NOT_RUN`'s pip).
    assert all(re.search(r"16 cores|hosts?\b|^\(installs packages", why) for why in skipped), skipped


@pytest.fixture(scope="module")
def runner(tmp_path_factory: pytest.TempPathFactory):
    r = Runner(tmp_path_factory.mktemp("readme"))
    yield r
    r.close()
    r.check_no_leaks()


@pytest.mark.parametrize("step", [pytest.param(s, id=s.id, marks=pytest.mark.slow) for s in STEPS])
def test_readme(step: Step, runner: Runner) -> None:
    """One step of the README (slow: the steps start processes, servers and a Ray head)."""
    if step.kind in ("skip", "not-run", "unknown"):
        pytest.skip(step.why)  # unknown ones fail in test_no_block_is_left_unrunnable
    if step.kind == "errors":
        raised = real_errors(runner.workdir)
        for line in filter(None, (ln.strip() for ln in step.text.splitlines())):
            assert line in raised, f"README line {step.line} quotes an error corepipe does not raise:\n" \
                                   f"{line}\nwhat it raises:\n" + "\n".join(raised)
        return
    getattr(runner, step.kind)(step)
    runner.check_no_leaks()


def _core_memory_claims() -> list[tuple[str, str]]:
    """(built-in model, core memory) pairs the README states for a model the test swaps."""
    claims = []
    for s in STEPS:
        if s.kind == "corepipe":
            words = shlex.split(s.text)
            models = [w[4:] for w in words if w.startswith("zoo:") and w[4:] in SMALL]
            if "--core-memory" in words and models:
                claims.append((models[0], words[words.index("--core-memory") + 1]))
        elif s.kind == "python":
            code = "".join(f'zoo.get("{n}")' for n in s.prelude if n == "bert") + s.text
            model = re.search(r'zoo\.get\("(\w+)"', code)
            memory = re.search(r'core_memory="([^"]+)"', code)
            if model and memory and model.group(1) in SMALL:
                claims.append((model.group(1), memory.group(1)))
    return claims


@pytest.mark.slow
def test_core_memory_in_the_readme_fits_the_real_model() -> None:
    """The swap to small models must not hide a README example that fails on the real one
    (issue 12: BERT-base with --core-memory 64MiB). Plans it without writing an artifact."""
    from corepipe import zoo
    from corepipe.artifact.target import resolve_target
    from corepipe.compiler.cut import solver
    from corepipe.compiler.cut.cost import estimate_node_seconds
    from corepipe.compiler.cut.partition import make_problem
    from corepipe.compiler.model.graph import analyze

    claims = _core_memory_claims()
    assert ("bert", "128MiB") in claims, claims
    for name in sorted({n for n, _ in claims}):
        model, feeds = zoo.get(name)
        graph = analyze(model, feeds)
        for memory in sorted({m for n, m in claims if n == name}):
            target = resolve_target("cpu", memory)
            problem = make_problem(graph, estimate_node_seconds(graph, target), target.core_memory)
            try:
                solver.min_stages(problem)
            except solver.Infeasible as exc:
                pytest.fail(f"the README compiles zoo:{name} with core memory {memory}, which cannot hold it: {exc}")
