"""What tests/test_readme.py changes in the README's blocks so they run in minutes on 2 cores
(small models for big ones, preludes for names a block does not define), and the errors the
README quotes, produced for real."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import onnx

from corepipe import zoo
from corepipe.runtime.process import module_command

#: Built-in models swapped for small ones of the same kind (same input names and dtypes).
SMALL = {"resnet50": "tiny_cnn", "densenet121": "tiny_cnn", "inception_v1": "tiny_cnn", "bert": "mlp"}
#: ResNet-50's input shape in Python blocks, and tiny_cnn's, which replaces it with the model.
SHAPES = {"1, 3, 224, 224": "1, 3, 32, 32"}
#: Flags whose value is a file the command must write.
WRITES = ("--plot", "--timeline", "--save", "--markdown", "-o", "--output")
#: Names Python blocks use without defining them, defined by the block's marker
#: ``<!-- readme-test: with NAME -->``: NAME -> code run before the block, in its process.
PRELUDES = {
    "bert": 'import corepipe\nfrom corepipe import zoo\nmodel, feeds = zoo.get("bert")\n',
    # The corpus's small GPT-2 (tests/decoders.py; optimum-onnx's environment builds it once).
    "gpt2_decoder": (f"import sys\nsys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
                     "from decoders import decoder_model\nmodel = str(decoder_model('gpt2'))\n"),
    "torch_models": (
        "import torch\nimport transformers\nimport corepipe\n"
        "torch.manual_seed(0)\n"
        "module = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()\n"
        "x = torch.randn(1, 16)\n"
        "bert = transformers.BertModel(transformers.BertConfig(\n"
        "    vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,\n"
        "    intermediate_size=64, max_position_embeddings=32)).eval()\n"
        "ids = torch.randint(0, 100, (1, 16))\nmask = torch.ones(1, 16, dtype=torch.int64)\n"
    ),
    # ResNet-50's SavedModel signature (224 x 224 x 3 in, 1000 out, Keras 3's input name) on a
    # model small enough to convert in seconds: the directory the TensorFlow example reads.
    "rn50_fp16": (
        "import os\nimport keras\n"
        "if not os.path.isdir('rn50_fp16'):\n"
        "    keras.utils.set_random_seed(0)\n"
        "    image = keras.Input((224, 224, 3))\n"
        "    y = keras.layers.Conv2D(8, 7, strides=4, activation='relu')(image)\n"
        "    y = keras.layers.Conv2D(8, 3, strides=2, activation='relu')(y)\n"
        "    y = keras.layers.GlobalAveragePooling2D()(y)\n"
        "    y = keras.layers.Dense(1000, activation='softmax')(y)\n"
        "    keras.Model(image, y).export('rn50_fp16', verbose=False)\n"
    ),
}
#: Text substitutions in Python blocks besides models and ports: 16 stages would be 16 worker
#: processes on 2 cores, only costing memory.
PY_SWAPS = {"'--num-neuroncores', '16'": "'--num-neuroncores', '2'"}


def small(command: str) -> list[str]:
    """A ``corepipe`` command's arguments with the `SMALL` swaps (``demo`` runs tiny_cnn)."""
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


def small_python(code: str) -> str:
    """A Python block with the `SMALL` models (``zoo.get("bert")``, ``"zoo:resnet50"``), their
    input shapes (`SHAPES`) and `PY_SWAPS`."""
    swapped = set()

    def model(m: re.Match[str]) -> str:
        name = m.group(2)
        if name in SMALL:
            swapped.add(name)
        return f'{m.group(1)}{SMALL.get(name, name)}"'

    code = re.sub(r'(zoo\.get\("|"zoo:)(\w+)"', model, code)
    if "resnet50" in swapped or re.search(r'"resnet50"', code):
        for big, little in SHAPES.items():
            code = code.replace(big, little)
    for old, new in PY_SWAPS.items():
        code = code.replace(old, new)
    return code


def write_missing_models(args: list[str], workdir: Path) -> None:
    """An ``.onnx`` file a command or a Python block reads that no earlier step wrote: BERT's
    inputs over dims batch and sequence when its name says ``dyn``, a one-layer BERT with BERT's
    inputs when it says ``bert``, else the MLP."""
    for i, word in enumerate(args):
        if not word.endswith(".onnx") or (i and args[i - 1] in WRITES) or (workdir / word).exists():
            continue
        if "dyn" in Path(word).name:
            model = _dynamic_bert_inputs()
        elif "bert" in Path(word).name:
            model = zoo.bert(num_layers=1, hidden=64, heads=2, intermediate=128, vocab=1000)
        else:
            model, _ = zoo.get("mlp")
        onnx.save(model, str(workdir / word))


def _dynamic_bert_inputs() -> onnx.ModelProto:
    """BERT's inputs over dims ``batch`` and ``sequence``: an embedding masked position by
    position, so padding changes no real position's answer."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.standard_normal((1000, 16)).astype(np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["e"]),
             helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["m", "axis"], ["m3"]),
             helper.make_node("Mul", ["e", "m3"], ["last_hidden_state"])]
    dims = ["batch", "sequence"]
    g = helper.make_graph(nodes, "bert_dyn", [helper.make_tensor_value_info(n, TensorProto.INT64, dims)
                                              for n in ("input_ids", "attention_mask")],
                          [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, [*dims, 16])],
                          [table, numpy_helper.from_array(np.array([-1], np.int64), "axis")])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


_ERRORS_SCRIPT = """
import json, sys
import numpy as np
import corepipe
from corepipe import zoo
from corepipe.runtime.process import module_command

out = []
for name, kwargs in (("bert", {"core_memory": "64MiB"}), ("resnet50", {"core_memory": "32MiB", "num_cores": 2})):
    model, feeds = zoo.get(name)
    try:
        corepipe.compile(model, f"errors_{name}", example_inputs=feeds, **kwargs)
    except corepipe.CorepipeError as exc:
        out.append(str(exc))
model = zoo.bert(num_layers=1, hidden=64, heads=2, intermediate=128, vocab=1000)
feeds = zoo.example_inputs(model)
cm = corepipe.compile(model, "errors_bert_small", example_inputs=feeds, num_cores=1)
with corepipe.load(cm.path, backend="inline") as pipe:
    try:
        pipe.run({**feeds, "input_ids": np.zeros((1, 64), np.float32)})
    except corepipe.InputError as exc:
        out.append(str(exc))
print(json.dumps(out))
"""


def real_errors(workdir: Path) -> list[str]:
    """The text of errors corepipe raises for the README's examples of them: BERT-base in cores of
    64 MiB, ResNet-50 in 2 cores of 32 MiB, and a request of the wrong dtype and shape for BERT's
    signature (a one-layer BERT with BERT-base's inputs). In a process of its own: BERT-base's
    418 MiB would otherwise stay in the test process's heap."""
    argv, env = module_command("corepipe")
    argv = argv[: argv.index("-m")] + ["-c", _ERRORS_SCRIPT]
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.strip().splitlines()[-1]))
