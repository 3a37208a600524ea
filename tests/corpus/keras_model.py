"""A Keras 3 model through tf2onnx, as TensorFlow users bring one: a small attention block and a
1-D convolution, exported as a SavedModel and converted by corepipe's TensorFlow front-end.

It is built in a child process (`convert_in_subprocess`): Keras numbers its tensors with a
process-wide counter (``keras_tensor``, ``keras_tensor_11``, ...), so a model built here would
rename the inputs of every Keras model a later test builds in the same process, and TensorFlow
would stay imported in the test process for the rest of the run.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

SEQ, FEATURES = 16, 32


def build_and_convert() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """The converted model and its example inputs (the conversion's static shapes)."""
    import keras

    from corepipe.frontends.tensorflow import convert_saved_model

    keras.utils.set_random_seed(0)
    x = keras.Input((SEQ, FEATURES), name="features")
    h = keras.layers.Dense(64)(x)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=32)(h, h)
    h = keras.layers.LayerNormalization()(h + a)
    f = keras.layers.Dense(64)(keras.layers.Dense(128, activation="relu")(h))
    h = keras.layers.LayerNormalization()(h + f)
    h = keras.layers.Conv1D(64, 3, padding="same", activation="relu")(h)
    y = keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(x, y)
    feeds = {"features": np.random.default_rng(0).standard_normal((1, SEQ, FEATURES), dtype=np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        model.export(str(Path(tmp) / "saved"), verbose=False)
        conv = convert_saved_model(Path(tmp) / "saved", feeds)
    return conv.model, dict(conv.examples)


def convert_in_subprocess(out: Path) -> dict[str, np.ndarray]:
    """Build and convert the model in a child process, saving it to ``out``; its example inputs.

    Raises:
        RuntimeError: the child failed (with the end of its output).
    """
    feeds_file = out.with_suffix(".npz")
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), str(out), str(feeds_file)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the Keras export failed: {done.stderr.strip()[-2000:]}")
    with np.load(feeds_file) as saved:
        feeds = {k: saved[k] for k in saved.files}
    feeds_file.unlink()
    return feeds


if __name__ == "__main__":
    model, examples = build_and_convert()
    onnx.save(model, sys.argv[1])
    np.savez(sys.argv[2], **examples)
