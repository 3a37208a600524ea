"""The export corpus: models as users bring them, made in code with random weights (small configs
of the real transformers and Keras architecture code), exported the ways users export them.

- BERT, DistilBERT, RoBERTa, GPT-2 (with its tied LM head), ViT and Whisper's encoder, each
  through torch.onnx's legacy exporter (``dynamo=False``, opset 14 and 17, dynamic batch and
  sequence axes) and its dynamo exporter (`corpus.hf`), and through optimum-onnx's
  ``main_export`` of the same model saved with ``save_pretrained`` (`corpus.optimum_export`);
- a Keras model through tf2onnx (`corpus.keras_model`);
- corepipe's zoo (the small ones here; ResNet-50, DenseNet-121 and Inception-v1 are `HEAVY`).

Exports are cached in ``tests/.cache/corpus`` (git-ignored), keyed by the versions of the
packages that made them and the source of the code that made them, so reruns cost nothing.

Use::

    from corpus import ENTRIES, load
    path, requests = load("bert-legacy14")   # an .onnx path, [example inputs, another request]
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
from pathlib import Path

import numpy as np
import onnx

from . import hf

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "corpus"
TORCH_EXPORTERS = ("legacy14", "legacy17", "dynamo")
ZOO = {"mlp": {}, "tiny_cnn": {}, "bert": {"num_layers": 2, "hidden": 64, "heads": 2, "intermediate": 128,
                                           "vocab": 500, "seq": 16},
       "resnet50": {"image_size": 64}, "densenet121": {"image_size": 64}, "inception_v1": {"image_size": 64}}
#: Entries whose compiles take seconds each (the zoo's CNNs at 64x64).
HEAVY = ("zoo-resnet50", "zoo-densenet121", "zoo-inception_v1")
ENTRIES: list[str] = ([f"{arch}-{ex}" for arch in hf.ARCHS for ex in (*TORCH_EXPORTERS, "optimum")]
                      + ["keras-tf2onnx"] + [f"zoo-{name}" for name in ZOO])


def _version(pkg: str) -> str:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return "none"


def _key(name: str) -> str:
    """What an export depends on: the code that makes it and the packages' versions."""
    h = hashlib.sha256(name.encode())
    for module in ("hf.py", "keras_model.py", "optimum_export.py"):
        h.update((Path(__file__).parent / module).read_bytes())
    for pkg in ("torch", "transformers", "onnx", "onnxscript", "tensorflow-cpu", "keras", "tf2onnx"):
        h.update(f"{pkg}={_version(pkg)};".encode())
    if name.endswith("-optimum"):
        h.update(os.environ.get("COREPIPE_OPTIMUM_PYTHON", "venv").encode())
    return h.hexdigest()[:12]


def _make(name: str, path: Path) -> dict[str, np.ndarray] | None:
    """Export ``name`` to ``path``; the example inputs when the exporter decides them."""
    arch, _, how = name.partition("-")
    if arch == "zoo":
        from corepipe import zoo

        model, feeds = zoo.get(how, **ZOO[how])
        onnx.save(model, str(path))
        return feeds
    if arch == "keras":
        from .keras_model import convert_in_subprocess

        return convert_in_subprocess(path)
    if how == "optimum":
        from .optimum_export import export

        export(arch, path)
    else:
        hf.export_torch(arch, path, how)
    return None


def requests_for(model: onnx.ModelProto, arch: str, examples: dict[str, np.ndarray] | None) -> list[dict[str, np.ndarray]]:
    """Two requests for ``model``'s inputs: the example inputs, and another with new values."""
    if examples is not None:  # keras, zoo: seeded normal floats as the second
        rng = np.random.default_rng(1)
        other = {k: rng.standard_normal(v.shape).astype(v.dtype) if v.dtype.kind == "f" else v.copy()
                 for k, v in examples.items()}
        return [examples, other]
    out = []
    for seed in (0, 1):
        base = hf.feeds(arch, seed)
        feeds = {}
        for vi in model.graph.input:
            if vi.name in base:
                feeds[vi.name] = base[vi.name]
            elif vi.name == "token_type_ids":
                feeds[vi.name] = np.zeros((1, hf.SEQ), np.int64)
            elif vi.name == "position_ids":
                feeds[vi.name] = np.arange(hf.SEQ, dtype=np.int64)[None]
            else:
                raise KeyError(f"{arch}: no request for input {vi.name!r}")
        out.append(feeds)
    return out


def load(name: str) -> tuple[str, list[dict[str, np.ndarray]]]:
    """The cached export of ``name`` (made now if missing) and two requests for it.

    Raises:
        OptimumMissing: an optimum entry, and no optimum environment here, with why.
        RuntimeError: an export failed, with the exporter's output.
    """
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"{name}-{_key(name)}.onnx"
    feeds_path = path.with_suffix(".npz")
    if not path.is_file():
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        examples = _make(name, tmp)
        if examples is not None:
            np.savez(feeds_path, **examples)
        os.replace(tmp, path)  # whole files only, even with runs side by side
    examples = dict(np.load(feeds_path)) if feeds_path.is_file() else None
    model = onnx.load(str(path), load_external_data=False)
    return str(path), requests_for(model, name.partition("-")[0], examples)
