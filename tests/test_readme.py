"""Every command the README prints works as printed, and its marked Python runs.

What runs, in README order, in one temporary directory (later commands use what earlier ones
wrote), each as ``python -m corepipe ...`` in its own process:

- every ``corepipe`` command in a ```` ```bash ```` block: a line, or each part of a line joined
  by ``&&`` or ``;``, cut at a ``|`` and at a ``#`` comment, with ``\\`` continuations joined;
- every ```` ```python ```` block preceded by ``<!-- readme-test: run ... -->``.

What is swapped, the only changes, so the whole README runs in well under a minute here:

- `SMALL`: the big built-in models become small ones of the same kind (``zoo:bert`` ->
  ``zoo:mlp``...), in commands and in Python (``zoo.get("bert")``, ``"zoo:resnet50"``); ``demo``
  runs ``--model tiny_cnn``;
- an ``.onnx`` file a command reads that no earlier step wrote is written by the test: a
  one-layer BERT with BERT's inputs when its name says ``bert``, else the MLP.

The memory verdict the swap would hide is checked on the real model instead: every
``--core-memory`` / ``core_memory=`` the README gives a swapped model must hold that model
(`test_core_memory_in_the_readme_fits_the_real_model`: BERT-base in 128 MiB).

What is skipped: commands matching `SKIP` (each with its reason: a server that runs until
stopped, a cluster), and ```` ```bash ```` blocks preceded by ``<!-- readme-test: skip ... -->``.
Files a command is asked to write (``--plot``, ``--timeline``, ``--save``) must exist after it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import onnx
import pytest

from corepipe import zoo
from corepipe.runtime.process import module_command

README = Path(__file__).resolve().parents[1] / "README.md"

#: Built-in models swapped for small ones of the same kind (same input names and dtypes).
SMALL = {"resnet50": "tiny_cnn", "densenet121": "tiny_cnn", "inception_v1": "tiny_cnn", "bert": "mlp"}
#: Commands not run here: pattern (searched in the command) -> why.
SKIP = {
    r"^corepipe serve\b": "starts a server that runs until it is stopped (the serve tests cover it)",
    r"--backend[ =]ray\b": "needs a Ray cluster (the ray tests cover it)",
    r"--address\b": "connects to a running cluster",
}
#: Flags whose value is a file the command must write.
WRITES = ("--plot", "--timeline", "--save", "--markdown", "-o", "--output")


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(language, marker, body)`` of each fenced block; ``marker``: the ``readme-test``
    comment on the line before its fence, if any."""
    out = []
    pattern = r"(?:<!--\s*readme-test:\s*(\w+)[^>]*-->\s*\n)?```(\w*)\n(.*?)\n```"
    for m in re.finditer(pattern, text, re.S):
        out.append((m.group(2), m.group(1) or "", m.group(3)))
    return out


def commands(text: str) -> list[str]:
    """The ``corepipe`` commands of the README's bash blocks, in order (see the docstring)."""
    found = []
    for lang, marker, body in blocks(text):
        if lang not in ("bash", "sh", "shell", "console") or marker == "skip":
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.removeprefix("$ ")
            for part in re.split(r"&&|;", line):
                part = part.split("|")[0]
                words = shlex.split(part, comments=True)
                if words and words[0] == "corepipe":
                    found.append(shlex.join(words))
    return found


def python_snippets(text: str) -> list[str]:
    return [body for lang, marker, body in blocks(text) if lang == "python" and marker == "run"]


def skipped(command: str) -> str | None:
    return next((why for pattern, why in SKIP.items() if re.search(pattern, command)), None)


def small(command: str) -> list[str]:
    """The command's arguments with the swaps of `SMALL` (see the module docstring)."""
    words = shlex.split(command)[1:]
    out = [f"zoo:{SMALL.get(w[4:], w[4:])}" if w.startswith("zoo:") else w for w in words]
    if out and out[0] == "demo":
        if "--model" in out:
            out[out.index("--model") + 1] = "tiny_cnn"
        elif "-m" in out:
            out[out.index("-m") + 1] = "tiny_cnn"
        else:
            out += ["--model", "tiny_cnn"]
    return out


def write_missing_models(args: list[str], workdir: Path) -> None:
    for i, word in enumerate(args):
        if not word.endswith(".onnx") or (i and args[i - 1] in WRITES) or (workdir / word).exists():
            continue
        if "bert" in Path(word).name:
            model = zoo.bert(num_layers=1, hidden=64, heads=2, intermediate=128, vocab=1000)
        else:
            model, _ = zoo.get("mlp")
        onnx.save(model, str(workdir / word))


def run(args: list[str], workdir: Path) -> subprocess.CompletedProcess[str]:
    argv, env = module_command("corepipe", *args)
    env["COLUMNS"] = "120"
    return subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


TEXT = README.read_text()
COMMANDS = list(dict.fromkeys(commands(TEXT)))  # a command printed twice runs once


def test_the_readme_has_commands_to_run() -> None:
    """Guard against a parser that silently finds nothing."""
    assert sum(1 for c in COMMANDS if not skipped(c)) >= 8, COMMANDS
    assert {shlex.split(c)[1] for c in COMMANDS} >= {"demo", "compile", "inspect", "run", "bench"}
    assert python_snippets(TEXT), "the Python example lost its readme-test marker"


def test_command_extraction() -> None:
    text = (
        "```bash\npip install . && corepipe demo   # first\n"
        "corepipe inspect out/ --json | jq .stages\n"
        "corepipe run out/ \\\n  --requests 5; echo done\n```\n"
        "<!-- readme-test: skip (needs a cluster) -->\n```bash\ncorepipe run out/ -b ray\n```\n"
        "```python\nimport corepipe\n```\n"
        "<!-- readme-test: run -->\n```python\nprint(1)\n```\n"
    )
    assert commands(text) == ["corepipe demo", "corepipe inspect out/ --json",
                              "corepipe run out/ --requests 5"]
    assert python_snippets(text) == ["print(1)"]
    assert small("corepipe demo --model bert") == ["demo", "--model", "tiny_cnn"]
    assert small("corepipe bench zoo:resnet50 -n 2") == ["bench", "zoo:tiny_cnn", "-n", "2"]
    assert skipped("corepipe serve art/ --port 8000") is not None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("command", COMMANDS, ids=[c[:60] for c in COMMANDS])
def test_readme_command(command: str, workdir: Path) -> None:
    why = skipped(command)
    if why:
        pytest.skip(why)
    args = small(command)
    write_missing_models(args, workdir)
    done = run(args, workdir)
    assert done.returncode == 0, f"{command}\n(ran as corepipe {shlex.join(args)})\n{done.stdout}\n{done.stderr}"
    for i, word in enumerate(args[:-1]):
        if word in ("--plot", "--timeline", "--save"):
            assert (workdir / args[i + 1]).is_file(), f"{command} did not write {args[i + 1]}"


@pytest.mark.usefixtures("no_leaks")
@pytest.mark.parametrize("index", range(len(python_snippets(TEXT))))
def test_readme_python(index: int, workdir: Path) -> None:
    code = python_snippets(TEXT)[index]
    code = re.sub(r'zoo\.get\("(\w+)"', lambda m: f'zoo.get("{SMALL.get(m.group(1), m.group(1))}"', code)
    code = re.sub(r'"zoo:(\w+)"', lambda m: f'"zoo:{SMALL.get(m.group(1), m.group(1))}"', code)
    script = workdir / f"readme_{index}.py"
    script.write_text(code)
    argv, env = module_command("corepipe")
    argv = argv[: argv.index("-m")] + [str(script)]
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _core_memory_claims() -> list[tuple[str, str]]:
    """(built-in model, core memory) pairs the README states for a model the test swaps."""
    claims = []
    for command in COMMANDS:
        words = shlex.split(command)
        models = [w[4:] for w in words if w.startswith("zoo:") and w[4:] in SMALL]
        if "--core-memory" in words and models:
            claims.append((models[0], words[words.index("--core-memory") + 1]))
    for code in python_snippets(TEXT):
        model = re.search(r'zoo\.get\("(\w+)"', code)
        memory = re.search(r'core_memory="([^"]+)"', code)
        if model and memory and model.group(1) in SMALL:
            claims.append((model.group(1), memory.group(1)))
    return claims


def test_core_memory_in_the_readme_fits_the_real_model() -> None:
    """The swap to small models must not hide a README example that fails on the real one
    (issue 12: BERT-base with --core-memory 64MiB). Plans it without writing an artifact."""
    from corepipe.artifact.target import resolve_target
    from corepipe.compiler import solver
    from corepipe.compiler.cost import estimate_node_seconds
    from corepipe.compiler.graph import analyze
    from corepipe.compiler.partition import make_problem

    claims = _core_memory_claims()
    assert ("bert", "128MiB") in claims, claims
    for name, memory in sorted(set(claims)):
        model, feeds = zoo.get(name)
        graph = analyze(model, feeds)
        target = resolve_target("cpu", memory)
        problem = make_problem(graph, estimate_node_seconds(graph, target), target.core_memory)
        try:
            solver.min_stages(problem)
        except solver.Infeasible as exc:
            pytest.fail(f"the README compiles zoo:{name} with core memory {memory}, which cannot hold it: {exc}")
