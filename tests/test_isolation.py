"""Helper processes import corepipe's own stack, never files from the caller's directory."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.usefixtures("no_leaks")


def test_workers_ignore_stdlib_shadows_in_the_working_directory(tmp_path):
    # A user's directory with a file named like a standard module (bisect, random, ...):
    # the user's own script runs fine, and the pipeline's workers must too.
    (tmp_path / "bisect.py").write_text("raise ImportError('shadowed bisect imported')\n")
    script = tmp_path / "use.py"
    script.write_text(textwrap.dedent("""
        import sys
        sys.path.remove(sys.path[0])  # the script's dir: keep the user's process itself sane
        import corepipe
        from corepipe import zoo
        model, feeds = zoo.get("mlp")
        cm = corepipe.compile(model, "out", example_inputs=feeds, num_cores=2)
        with corepipe.load("out") as pipe:
            pipe.run(feeds)
        print("ok")
    """))
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "ok"
