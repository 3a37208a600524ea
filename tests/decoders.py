"""The decoder corpus (issue 25): decoders made in code with random weights, saved with
``save_pretrained`` and exported with past the ways users export them, each with a local
byte-level BPE tokenizer; and the reference every decoder test is checked against.

- ``"gpt2"``: GPT-2 (untied head), optimum-onnx ``main_export(task="text-generation-with-past")``;
- ``"llama"``: Llama-style (RoPE, grouped-query attention with 2 key/value heads for 4 query
  heads, RMSNorm), optimum-onnx too;
- ``"gpt2_legacy"``: GPT-2 through torch.onnx's legacy exporter with ``past.{i}`` / ``present.{i}``
  ([2, batch, heads, past, head_dim]), in this environment (torch 2.13, transformers 5);
- ``"gpt2-bench"``: issue 25's benchmark model (6 layers, width 512, 8 heads, vocab 8192), optimum.

Use::

    from decoders import decoder_model, reference_generate
    path = decoder_model("gpt2")                      # .../model.onnx, tokenizer.json beside it
    new = reference_generate(path, [[5, 6, 7]], max_new_tokens=16)   # [[tok, ...]]

Each model is built once into ``/tmp/corepipe-decoders/<name>/<key>/`` (``key``: a hash of the
recipe, of `decoder_export`'s source and of the exporter's python), under a file lock so test
runs side by side build it once. The optimum entries need optimum-onnx's venv
(``$COREPIPE_OPTIMUM_PYTHON``, else ``/tmp/corepipe-optimum/bin/python``, made by ``.ci/run``):
without it `decoder_model` raises `OptimumMissing` and `decoder_model_or_skip` skips (fails in CI).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported as ``tests.decoders`` (benchmarks): `corpus` is a sibling
    sys.path.insert(0, str(HERE))
ROOT = Path(os.environ.get("COREPIPE_DECODERS", "/tmp/corepipe-decoders"))

_SMALL = {"layers": 2, "width": 64, "heads": 4, "vocab": 1000, "positions": 256, "seed": 0}
#: name -> recipe (what `decoder_export` builds). Small ones run in seconds on 2 cores.
RECIPES: dict[str, dict[str, Any]] = {
    "gpt2": {**_SMALL, "arch": "gpt2", "exporter": "optimum"},
    "llama": {**_SMALL, "arch": "llama", "exporter": "optimum", "layers": 3, "width": 64, "heads": 4,
              "kv_heads": 2, "seed": 1, "init": 0.4},
    "gpt2_legacy": {**_SMALL, "arch": "gpt2", "exporter": "legacy", "seed": 2},
    "gpt2-bench": {"arch": "gpt2", "exporter": "optimum", "layers": 6, "width": 512, "heads": 8,
                   "vocab": 8192, "positions": 1024, "seed": 0},
}
EOS_ID = 0  # "<|endoftext|>", the tokenizer's first id; the models' bos/eos/pad


def _python_for(exporter: str, probe: bool) -> str:
    """The python that runs ``exporter``'s export; with ``probe``, checked to import optimum
    (raises `OptimumMissing`, saying why, where it does not). The probe costs seconds: a cached
    model skips it."""
    if exporter == "legacy":
        return sys.executable
    from corpus.optimum_export import VENV_PYTHON, OptimumMissing, optimum_python

    if not probe:
        return os.environ.get("COREPIPE_OPTIMUM_PYTHON", VENV_PYTHON)
    python, why = optimum_python()
    if python is None:
        raise OptimumMissing(why)
    return python


def _key(recipe: dict[str, Any], python: str) -> str:
    h = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode())
    h.update((HERE / "decoder_export.py").read_bytes())
    h.update(python.encode())
    return h.hexdigest()[:12]


def decoder_dir(name: str) -> Path:
    """The directory of ``name``'s build (model.onnx, tokenizer.json, tokenizer_config.json,
    recipe.json, hf/), made now if missing.

    Raises:
        KeyError: an unknown name (the known ones listed).
        OptimumMissing: an optimum entry and no optimum environment here, saying why.
        RuntimeError: the export failed, with the exporter's output.
    """
    if name not in RECIPES:
        raise KeyError(f"no decoder {name!r} in the corpus: expected one of {sorted(RECIPES)}")
    recipe = RECIPES[name]
    home = ROOT / name
    done = home / _key(recipe, _python_for(recipe["exporter"], probe=False))
    if (done / "model.onnx").is_file():
        return done
    python = _python_for(recipe["exporter"], probe=True)
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run building it: wait, then use its build
        if (done / "model.onnx").is_file():
            return done
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=home))
        try:
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
            run = subprocess.run([python, str(HERE / "decoder_export.py"), json.dumps(recipe), str(tmp)],
                                 env=env, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"building decoder {name!r} with {python} failed:\n{run.stderr[-3000:]}")
            os.replace(tmp, done)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return done


def decoder_model(name: str) -> Path:
    """The ``model.onnx`` of ``name`` (see `decoder_dir`; tokenizer.json beside it)."""
    return decoder_dir(name) / "model.onnx"


def decoder_model_or_skip(name: str) -> Path:
    """`decoder_model`, or a skip saying why where optimum's environment is missing (a failure
    with ``CI=true``: .ci/run makes that environment)."""
    from conftest import skip_unless_ci
    from corpus.optimum_export import OptimumMissing

    try:
        return decoder_model(name)
    except OptimumMissing as e:
        skip_unless_ci(str(e))


def tokenizer(path: str | os.PathLike[str]) -> Any:
    """The ``tokenizers.Tokenizer`` beside a model (``path``: the model file or its directory)."""
    from tokenizers import Tokenizer

    p = Path(path)
    return Tokenizer.from_file(str((p if p.is_dir() else p.parent) / "tokenizer.json"))


# --- the reference: one onnxruntime session on the whole model, each sequence alone -------------

_SESSIONS: dict[str, Any] = {}


def session(path: str | os.PathLike[str]) -> Any:
    """One cached onnxruntime session per model path (1 thread: tests run side by side)."""
    import onnxruntime as ort

    key = str(path)
    if key not in _SESSIONS:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        _SESSIONS[key] = ort.InferenceSession(key, opts, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def past_names(sess: Any) -> list[tuple[str, str]]:
    """(past input, present output) pairs of a decoder session, in the model's order."""
    outs = {o.name for o in sess.get_outputs()}
    pairs = []
    for i in sess.get_inputs():
        if i.name.startswith("past_key_values."):
            present = "present." + i.name.removeprefix("past_key_values.")
        elif i.name.startswith("past."):
            present = "present." + i.name.removeprefix("past.")
        else:
            continue
        if present not in outs:
            raise ValueError(f"past input {i.name!r} has no present output {present!r}")
        pairs.append((i.name, present))
    return pairs


def empty_past(sess: Any, batch: int = 1) -> dict[str, np.ndarray]:
    """Zero-length pasts for a prefill: each past input's static dims kept, its first symbolic
    dim (the batch) set to ``batch``, its second (the past length) to 0."""
    feeds = {}
    inputs = {i.name: i for i in sess.get_inputs()}
    for past, _ in past_names(sess):
        shape, symbolic = [], 0
        for d in inputs[past].shape:
            if isinstance(d, int):
                shape.append(d)
            else:
                shape.append(batch if symbolic == 0 else 0)
                symbolic += 1
        feeds[past] = np.zeros(shape, np.float32)
    return feeds


def step(sess: Any, ids: np.ndarray, past: dict[str, np.ndarray], past_len: int
         ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One whole-model call of a batch-1 sequence: ``ids`` [1, n] after ``past_len`` tokens of
    ``past``. Returns (logits [1, n, vocab], the new past: the presents, renamed as pasts)."""
    names = {i.name for i in sess.get_inputs()}
    n = ids.shape[1]
    feeds = {"input_ids": ids.astype(np.int64), **past}
    if "attention_mask" in names:
        feeds["attention_mask"] = np.ones((1, past_len + n), np.int64)
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(past_len, past_len + n, dtype=np.int64)[None]
    pairs = past_names(sess)
    outs = sess.run(["logits", *[present for _, present in pairs]], feeds)
    return outs[0], {p: o for (p, _), o in zip(pairs, outs[1:], strict=True)}


def reference_generate(path: str | os.PathLike[str], prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       eos_token_id: int | None = None) -> list[list[int]]:
    """Greedy tokens of each prompt: one onnxruntime session on the whole model, each sequence
    alone, its own past (empty at the prompt step, then each step's presents).

    Returns the new tokens only (the prompt not repeated), ``max_new_tokens`` of them, or fewer
    when ``eos_token_id`` comes (it is included, then the sequence stops)."""
    sess = session(path)
    out = []
    for prompt in prompts:
        if len(prompt) == 0:
            raise ValueError("an empty prompt: a decoder needs at least one token to start from")
        ids = np.asarray(prompt, np.int64)[None]
        logits, past = step(sess, ids, empty_past(sess), 0)
        length, new = ids.shape[1], []
        while len(new) < max_new_tokens:
            tok = int(np.argmax(logits[0, -1]))
            new.append(tok)
            if tok == eos_token_id or len(new) == max_new_tokens:
                break
            logits, past = step(sess, np.array([[tok]], np.int64), past, length)
            length += 1
        out.append(new)
    return out


def prompts(vocab: int, count: int, lengths: Sequence[int] | int, seed: int = 0) -> list[list[int]]:
    """``count`` seeded random prompts (ids 1..vocab-1: never the EOS id), of ``lengths`` (one
    length for all, or cycled)."""
    rng = np.random.default_rng(seed)
    ls = [lengths] * count if isinstance(lengths, int) else [lengths[i % len(lengths)] for i in range(count)]
    return [rng.integers(1, vocab, n).tolist() for n in ls]
