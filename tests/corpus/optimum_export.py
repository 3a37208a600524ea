"""optimum-onnx's ``main_export`` of the corpus' transformers models, saved with
``save_pretrained`` from a config (offline), as users export them.

optimum-onnx 0.1.0 needs transformers < 4.58, and corepipe's front-ends use transformers 5, so
the export runs in its own virtual environment: ``$COREPIPE_OPTIMUM_PYTHON``, else
``/tmp/corepipe-optimum/bin/python`` (``.ci/run`` makes it: a venv over the system's packages
with ``optimum-onnx==0.1.0 transformers==4.57.6``). Run as a script in that environment:
``python optimum_export.py ARCH OUT_DIR``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV_PYTHON = "/tmp/corepipe-optimum/bin/python"


class OptimumMissing(RuntimeError):
    """No python with optimum-onnx here: the optimum entries cannot be exported (a skip locally,
    a failure with ``CI=true``, where .ci/run must have made the environment)."""


def optimum_python() -> tuple[str | None, str]:
    """(the python that has optimum-onnx, or None, and why not)."""
    python = os.environ.get("COREPIPE_OPTIMUM_PYTHON", VENV_PYTHON)
    if not Path(python).is_file():
        return None, (f"optimum-onnx's python not found at {python} (set COREPIPE_OPTIMUM_PYTHON, or make the "
                      "venv as .ci/run does: optimum-onnx==0.1.0 needs transformers<4.58)")
    probe = subprocess.run([python, "-c", "import optimum.exporters.onnx"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None, f"{python} cannot import optimum.exporters.onnx: {probe.stderr.strip()[-300:]}"
    return python, ""


def export(arch: str, out: Path) -> None:
    """Export ``arch`` with optimum into ``out`` (the encoder file, see `hf.OPTIMUM`).

    Raises:
        OptimumMissing: no optimum environment, with why.
        RuntimeError: the export failed (with its output).
    """
    python, why = optimum_python()
    if python is None:
        raise OptimumMissing(why)
    env = dict(os.environ, PYTHONPATH=str(HERE.parent), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([python, str(HERE / "optimum_export.py"), arch, str(out)], env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"optimum export of {arch} failed: {done.stderr.strip()[-2000:]}")


def _main(arch: str, out: str) -> None:
    import shutil

    from optimum.exporters.onnx import main_export

    from corpus import hf

    task, file = hf.OPTIMUM[arch]
    with tempfile.TemporaryDirectory() as tmp:
        hf.pretrained(arch).save_pretrained(tmp)
        # Whisper's encoder takes exactly 2 x max_source_positions frames (optimum's dummy: 3000).
        shapes = {"nb_max_frames": hf.FRAMES} if arch == "whisper" else {}
        main_export(tmp, output=Path(tmp) / "onnx", task=task, do_validation=False, **shapes)
        shutil.copy(Path(tmp) / "onnx" / file, out)


if __name__ == "__main__":
    _main(sys.argv[1], sys.argv[2])
