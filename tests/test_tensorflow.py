"""TensorFlow SavedModels through tensorflow-neuron's call (``corepipe.tensorflow``), the CLI and
`corepipe.compile`: the pipeline's outputs equal TensorFlow's own for the same inputs.

Tolerances. fp32 (fp32 examples of fp32 models): TensorFlow and the pipeline (OpenVINO or
onnxruntime, fp32) agree to rtol 1e-4, atol 1e-6 (observed on ResNet-50's softmax: 3.5e-10,
relative 3e-7). An fp16 example or an fp16 model compiles at precision "auto" (bf16 on a CPU with
avx512_bf16, like this one; fp32 elsewhere): at bf16, the documented bf16 tolerance of
`corepipe.engines.tolerance` (cosine >= 0.999 and relative L2 <= 2 % per output; observed on
ResNet-50: relative L2 0.05 %) against TensorFlow on the same fp16 inputs cast to fp32 (the
pipeline's first node casts them too), or, for the fp16 model, against TensorFlow's own fp16
arithmetic.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")

import corepipe
import corepipe.tensorflow as tfn
from corepipe.cli import app
from corepipe.compiler.model.graph import analyze
from corepipe.engines import cpu_math
from corepipe.engines.tolerance import close_enough

SEED_FLAGS = ["--static-weights", "--num-neuroncores", "16"]


def _tf_reference(saved: Path) -> Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """TensorFlow's own answer: the SavedModel's serving_default signature, fp16 feeds cast to fp32
    where the signature takes fp32 (what the pipeline's first node does)."""
    sig = tf.saved_model.load(str(saved)).signatures["serving_default"]
    specs = sig.structured_input_signature[1]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = {k: tf.constant(v.astype(specs[k].dtype.as_numpy_dtype)) for k, v in feeds.items()}
        return {k: v.numpy() for k, v in sig(**args).items()}

    return run


@pytest.fixture(scope="session")
def saved_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Keras 3 models exported as SavedModels, once per session: ResNet-50 (weights=None), a small
    text model with two int32 inputs, and a small CNN that computes in float16."""
    root = tmp_path_factory.mktemp("savedmodels")
    # Keras 3 names unnamed inputs keras_tensor, keras_tensor_1, ... by a process-wide count: start
    # it afresh, as the seed's own script would, whatever Keras models earlier tests made.
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    keras.applications.ResNet50(weights=None).export(str(root / "rn50"), verbose=False)

    ids = keras.Input((16,), dtype="int32", name="input_ids")
    mask = keras.Input((16,), dtype="int32", name="attention_mask")
    x = keras.layers.Embedding(100, 32)(ids)
    x = x * keras.ops.expand_dims(keras.ops.cast(mask, "float32"), -1)
    x = keras.layers.LayerNormalization()(x + keras.layers.MultiHeadAttention(2, 16)(x, x))
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x))
    keras.Model([ids, mask], logits).export(str(root / "text"), verbose=False)

    keras.config.set_dtype_policy("float16")
    try:
        image = keras.Input((32, 32, 3))
        y = keras.layers.ReLU()(keras.layers.BatchNormalization()(keras.layers.Conv2D(8, 3)(image)))
        y = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(y))
        keras.Model(image, y).export(str(root / "cnn_fp16"), verbose=False)
    finally:
        keras.config.set_dtype_policy("float32")

    class NoSignature(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
        def double(self, x: tf.Tensor) -> tf.Tensor:
            return 2 * x

    class Unsupported(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def f(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"y": tf.math.igamma(x + 2.0, x * x + 1.0)}  # no ONNX counterpart in tf2onnx

    unsupported = Unsupported()
    tf.saved_model.save(unsupported, str(root / "unsupported"), signatures={"serving_default": unsupported.f})
    module = NoSignature()
    tf.saved_model.save(module, str(root / "free_dims"), signatures={"serving_default": module.double})
    weights_only = tf.Module()
    weights_only.w = tf.Variable([1.0])
    tf.saved_model.save(weights_only, str(root / "no_signature"))
    return {p.name: p for p in root.iterdir()}


def cm_feeds(cm: corepipe.CompiledModel) -> dict[str, np.ndarray]:
    """Zeros in the shapes and dtypes of the compiled pipeline's inputs."""
    return {s.name: np.zeros(s.shape, s.dtype) for s in cm.inputs}


def _precision(cm: corepipe.CompiledModel) -> str:
    """The loosest precision any stage runs at: its tolerance applies to the outputs."""
    return next((p for p in ("bf16", "fp16") if any(st.precision == p for st in cm.stages)), "fp32")


def _check(got: np.ndarray, want: np.ndarray, precision: str) -> None:
    if precision == "fp32":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    else:
        ok, figures = close_enough(got.astype(np.float32), want.astype(np.float32), precision)
        assert ok, f"{precision}: {figures}"


def _images(n: int, dtype: str) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 224, 224, 3)).astype(dtype) for _ in range(n)]


@pytest.mark.slow
def test_seed_call_fp16_example(saved_models: dict[str, Path], tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed's call, as written: fp16 example, 16 cores, a versioned output directory."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "rn50_fp16").symlink_to(saved_models["rn50"])
    example_input = np.zeros([1, 224, 224, 3], dtype="float16")
    result = tfn.saved_model.compile("rn50_fp16", "rn50_fp16_compiled/1",
                                     model_feed_dict={"input_1:0": example_input},
                                     compiler_args=SEED_FLAGS,
                                     export_path="rn50.onnx")  # keeps the converted graph to count its nodes
    assert result.success and result.path == Path("rn50_fp16_compiled/1") and result["num_cores"] == 16
    assert result["inputs"] == {"input_1:0": "keras_tensor"}  # Keras 3's name for Keras 2's input_1
    cm = corepipe.CompiledModel.open("rn50_fp16_compiled/1")
    # OnNeuronRatio, what Neuron's scripts check (> 0.5), means the share of the graph's operations
    # that run compiled: here 1.0, every node of the converted graph in a stage, none left out.
    converted = analyze(onnx.load("rn50.onnx"), cm_feeds(cm))
    assert result["OnNeuronRatio"] == 1.0
    assert cm.plan.num_nodes == len(converted.nodes) > 100
    assert [(s.node_start, s.node_end) for s in cm.stages] == list(
        zip([0] + [s.node_end for s in cm.stages[:-1]], [s.node_end for s in cm.stages]))
    assert cm.stages[-1].node_end == len(converted.nodes)
    assert [(s.name, s.dtype, s.shape) for s in cm.inputs] == [("keras_tensor", "float16", (1, 224, 224, 3))]
    assert [(s.name, s.dtype) for s in cm.outputs] == [("output_0", "float32")]

    # An fp16 example asks for 16-bit speed: fp16 where the CPU has fp16 math, else precision
    # "auto" (bf16 with avx512_bf16, fp32 without).
    precision, math = _precision(cm), cpu_math()
    assert precision == ("fp16" if math.fp16 else "bf16" if math.bf16 else "fp32")
    asked = "fp16" if math.fp16 else "auto"
    assert any(f"fp16 example inputs: precision '{asked}'" in note for note in result["notes"])
    reference = _tf_reference(saved_models["rn50"])
    with corepipe.load(result.path, backend="inline") as pipe:
        for x in _images(2, "float16"):
            got = pipe.run({"keras_tensor": x})
            _check(got["output_0"], reference({"keras_tensor": x})["output_0"], precision)
        with pytest.raises(corepipe.InputError, match="float16"):
            pipe.run({"keras_tensor": x.astype(np.float32)})


@pytest.mark.slow
def test_fp32_resnet50_streams_through_local_workers(saved_models: dict[str, Path], tmp_path: Path,
                                                     no_leaks: None) -> None:
    out = tmp_path / "rn50_compiled" / "1"
    result = tfn.saved_model.compile(
        str(saved_models["rn50"]), out, model_feed_dict={"keras_tensor:0": np.zeros([1, 224, 224, 3], "float32")},
        compiler_args=["--static-weights", "--num-neuroncores", "2"])
    assert result["notes"] == [] and result["num_cores"] == 2 and _precision(result.compiled) == "fp32"
    reference = _tf_reference(saved_models["rn50"])
    images = _images(3, "float32")
    with corepipe.load(out) as pipe:  # the local backend: one worker process per stage
        outputs = list(pipe.map({"keras_tensor": x} for x in images))
    for x, got in zip(images, outputs):
        np.testing.assert_allclose(got["output_0"], reference({"keras_tensor": x})["output_0"],
                                   rtol=1e-4, atol=1e-6)


def test_text_model_with_int32_inputs(saved_models: dict[str, Path], tmp_path: Path) -> None:
    feeds = {"input_ids:0": np.ones((1, 16), np.int32), "attention_mask": np.ones((1, 16), np.int32)}
    result = tfn.saved_model.compile(saved_models["text"], tmp_path / "text" / "1", model_feed_dict=feeds,
                                     num_cores=2)
    assert result["inputs"] == {"input_ids:0": "input_ids", "attention_mask": "attention_mask"}
    reference = _tf_reference(saved_models["text"])
    rng = np.random.default_rng(2)
    with corepipe.load(result.path, backend="inline") as pipe:
        assert {s.name: s.dtype for s in pipe.plan.inputs} == {"input_ids": "int32", "attention_mask": "int32"}
        for _ in range(4):
            request = {"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int32),
                       "attention_mask": (rng.random((1, 16)) < 0.8).astype(np.int32)}
            np.testing.assert_allclose(pipe.run(request)["output_0"], reference(request)["output_0"],
                                       rtol=1e-4, atol=1e-6)


def test_compiler_workdir_holds_the_intermediate_files(saved_models: dict[str, Path], tmp_path: Path) -> None:
    """tensorflow-neuron's ``compiler_workdir`` (Neuron's keras_resnet50/pb2sm_compile.py passes
    it) is a scratch directory: created, it receives the converted graph the stages are cut from
    and a summary; the artifact answers as without it."""
    feeds = {"input_ids:0": np.ones((1, 16), np.int32), "attention_mask": np.ones((1, 16), np.int32)}
    work = tmp_path / "scratch" / "text_workdir"  # its parent does not exist either
    result = tfn.saved_model.compile(saved_models["text"], tmp_path / "text" / "1", model_feed_dict=feeds,
                                     num_cores=2, compiler_workdir=str(work))
    converted = onnx.load(str(work / "converted.onnx"))
    assert len(analyze(converted, cm_feeds(result.compiled)).nodes) == result.compiled.plan.num_nodes
    assert sorted(i.name for i in converted.graph.input) == ["attention_mask", "input_ids"]
    summary = (work / "compile.txt").read_text()
    assert "stages: 2" in summary and "stage 1: nodes" in summary and str(result.path) in summary
    request = {"input_ids": np.arange(16, dtype=np.int32).reshape(1, 16), "attention_mask": np.ones((1, 16), np.int32)}
    with corepipe.load(result.path, backend="inline") as pipe:
        np.testing.assert_allclose(pipe.run(request)["output_0"], _tf_reference(saved_models["text"])(request)["output_0"],
                                   rtol=1e-4, atol=1e-6)
    (tmp_path / "file").write_text("")
    with pytest.raises(corepipe.CompileError, match=r"compiler_workdir .* cannot be made a directory"):
        tfn.saved_model.compile(saved_models["text"], tmp_path / "t2", model_feed_dict=feeds,
                                compiler_workdir=tmp_path / "file" / "sub")


def test_dynamic_batch_size_takes_a_batch_as_one_tensor(saved_models: dict[str, Path], tmp_path: Path) -> None:
    """tensorflow-neuron's ``dynamic_batch_size=True``: axis 0 stays free (corepipe's dim
    ``batch``, 1..8 here), so a batch-N request is one tensor; larger ones run in chunks."""
    feeds = {"input_ids:0": np.ones((1, 16), np.int32), "attention_mask": np.ones((1, 16), np.int32)}
    result = tfn.saved_model.compile(saved_models["text"], tmp_path / "text" / "1", model_feed_dict=feeds,
                                     num_cores=2, dynamic_batch_size=True)
    reference = _tf_reference(saved_models["text"])
    rng = np.random.default_rng(3)
    with corepipe.load(result.path, backend="inline") as pipe:
        assert pipe.plan.shapes.batch == "batch" and dict(pipe.plan.shapes.dims) == {"batch": (1, 8)}
        for rows in (3, 8, 11):
            request = {"input_ids": rng.integers(0, 100, (rows, 16)).astype(np.int32),
                       "attention_mask": (rng.random((rows, 16)) < 0.8).astype(np.int32)}
            out = pipe.run(request, split_batch=rows > 8)["output_0"]
            assert out.shape[0] == rows
            np.testing.assert_allclose(out, reference(request)["output_0"], rtol=1e-4, atol=1e-5)
    with pytest.raises(corepipe.CompileError, match=r"not free dims of .* free \(None\) dims are \['batch'\]"):
        tfn.saved_model.compile(saved_models["text"], tmp_path / "b", model_feed_dict=feeds,
                                dynamic_dims={"sequence": (1, 16)})


@pytest.mark.slow
def test_compiled_savedmodel_is_served(saved_models: dict[str, Path], tmp_path: Path) -> None:
    """``tfn``'s versioned output ``text_compiled/1`` behind ``corepipe serve``, as model
    ``text_compiled`` version 1, answering tritonclient with TensorFlow's outputs."""
    pytest.importorskip("uvicorn")
    httpclient = pytest.importorskip("tritonclient.http")
    from serving import Server

    feeds = {"input_ids:0": np.ones((1, 16), np.int32), "attention_mask:0": np.ones((1, 16), np.int32)}
    tfn.saved_model.compile(saved_models["text"], tmp_path / "text_compiled" / "1", model_feed_dict=feeds,
                            num_cores=2)
    reference = _tf_reference(saved_models["text"])
    server = Server.start(tmp_path / "text_compiled", "--num-cores", "2")
    try:
        client = httpclient.InferenceServerClient(server.http)
        assert client.get_model_metadata("text_compiled", "1")["versions"] == ["1"]
        rng = np.random.default_rng(4)
        for _ in range(3):
            request = {"input_ids": rng.integers(0, 100, (1, 16)).astype(np.int32),
                       "attention_mask": (rng.random((1, 16)) < 0.8).astype(np.int32)}
            tensors = []
            for name, value in request.items():
                tensor = httpclient.InferInput(name, list(value.shape), "INT32")
                tensor.set_data_from_numpy(value)
                tensors.append(tensor)
            got = client.infer("text_compiled", tensors, model_version="1").as_numpy("output_0")
            np.testing.assert_allclose(got, reference(request)["output_0"], rtol=1e-4, atol=1e-6)
    finally:
        assert server.stop() == 0, "\n".join(server.lines)


def test_float16_model_answers_in_float16(saved_models: dict[str, Path],
                                                               tmp_path: Path) -> None:
    example = np.zeros((1, 32, 32, 3), np.float16)
    result = tfn.saved_model.compile(saved_models["cnn_fp16"], tmp_path / "cnn" / "1",
                                     model_feed_dict={"input_1:0": example}, num_cores=2)
    assert any("float16" in note and "float32" in note for note in result["notes"])
    name = result["inputs"]["input_1:0"]
    reference = _tf_reference(saved_models["cnn_fp16"])
    with corepipe.load(result.path, backend="inline") as pipe:
        assert [s.dtype for s in pipe.plan.outputs] == ["float16"]
        x = np.random.default_rng(3).standard_normal(example.shape).astype(np.float16)
        got, ref = pipe.run({name: x})["output_0"], reference({name: x})["output_0"]
    assert got.dtype == ref.dtype == np.float16
    precision = _precision(result.compiled)
    # fp16 where the CPU has fp16 math (avx512_fp16, AMX-FP16: a Sapphire Rapids), else bf16 where
    # it has bf16, else fp32, as corepipe.tensorflow's docstring says.
    math = cpu_math()
    assert precision == ("fp16" if math.fp16 else "bf16" if math.bf16 else "fp32")
    if precision == "fp32":  # fp32 arithmetic against TensorFlow's fp16 rounding: a few fp16 ulps
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=0, atol=1e-2)
    else:
        _check(got, ref, precision)


def test_numpy_default_dtypes_stand_for_the_signatures(saved_models: dict[str, Path], tmp_path: Path) -> None:
    """np.zeros(shape) is float64 and np.ones(shape, int) int64: the pipeline keeps the model's dtypes."""
    result = tfn.saved_model.compile(saved_models["text"], tmp_path / "text", num_cores=1, model_feed_dict={
        "input_ids": np.ones((1, 16), int), "attention_mask": np.ones((1, 16), int)})
    assert {s.dtype for s in result.compiled.inputs} == {"int32"}
    result = tfn.saved_model.compile(saved_models["cnn_fp16"], tmp_path / "cnn", num_cores=1,
                                     model_feed_dict={"x": np.zeros((1, 32, 32, 3))})
    assert [s.dtype for s in result.compiled.inputs] == ["float32"]


def test_compile_and_cli_take_a_savedmodel_directory(saved_models: dict[str, Path], tmp_path: Path) -> None:
    cm = corepipe.compile(saved_models["text"], tmp_path / "api", num_cores=2,
                          export_path=tmp_path / "text.onnx")  # no feeds: batch 1 from the signature
    assert {s.name: s.shape for s in cm.inputs} == {"input_ids": (1, 16), "attention_mask": (1, 16)}
    assert (tmp_path / "text.onnx").is_file()
    # The batch fixed without being asked is said, with how to keep it free (issue 28).
    fixed = ("no example given, so the free batch dim (axis 0) is fixed at 1; keep it free with "
             "dynamic_dims={'batch': (1, 8)}")
    assert any("'input_ids'" in n and "'attention_mask'" in n and fixed in n for n in cm.plan.notes), cm.plan.notes
    said = CliRunner().invoke(app, ["compile", str(saved_models["text"]), "-o", str(tmp_path / "said"), "-n", "1"])
    assert said.exit_code == 0 and "fixed at 1; keep it free with --dynamic batch=1:8" in " ".join(
        said.output.split()), said.output
    free = CliRunner().invoke(app, ["compile", str(saved_models["text"]), "-o", str(tmp_path / "free"), "-n", "1",
                                    "--dynamic", "batch=1:4", "--buckets", "none"])
    assert free.exit_code == 0, free.output
    assert dict(corepipe.CompiledModel.open(tmp_path / "free").plan.shapes.dims) == {"batch": (1, 4)}

    result = CliRunner().invoke(app, ["compile", str(saved_models["text"]), "-o", str(tmp_path / "cli"),
                                      "-n", "2", "--input", "input_ids:0=1x16", "--input", "attention_mask=1x16"])
    assert result.exit_code == 0, result.output
    assert "input 'input_ids:0' feeds signature input 'input_ids'" in result.output
    assert {s.name: s.dtype for s in corepipe.CompiledModel.open(tmp_path / "cli").inputs} == {
        "input_ids": "int32", "attention_mask": "int32"}

    bad = CliRunner().invoke(app, ["compile", str(saved_models["text"]), "-o", str(tmp_path / "x"),
                                   "--input", "input_ids=1x8"])
    assert bad.exit_code == 2 and "expected shape [?, 16], got [1, 8]" in " ".join(bad.output.split())


# ------------------------------------------------------------------------------------ errors
def _compile(saved: Path | str, out: Path, **kwargs: object) -> tfn.CompileResult:
    return tfn.saved_model.compile(saved, out, **kwargs)  # type: ignore[arg-type]


def test_error_not_a_savedmodel(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    with pytest.raises(corepipe.CompileError, match=r"not a TensorFlow SavedModel: expected a directory "
                       r"with saved_model.pb .*found a directory without saved_model.pb \(holds: model.onnx\)"):
        _compile(tmp_path, tmp_path / "out")
    with pytest.raises(corepipe.CompileError, match=r"not a TensorFlow SavedModel.*found no such directory"):
        _compile(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(corepipe.CompileError, match="not a TensorFlow SavedModel"):
        corepipe.compile(tmp_path, tmp_path / "out")  # a directory given to corepipe.compile too


def test_error_missing_signature(saved_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(corepipe.CompileError, match=r"has no signature 'serving_default' \(its signatures: none\)"):
        _compile(saved_models["no_signature"], tmp_path / "out")
    with pytest.raises(corepipe.CompileError, match=r"no signature 'predict' \(its signatures: 'serve', 'serving_default'\)"):
        _compile(saved_models["text"], tmp_path / "out", signature_def_key="predict")


def test_error_feed_not_in_signature(saved_models: dict[str, Path], tmp_path: Path) -> None:
    ids = np.ones((1, 16), np.int32)
    with pytest.raises(corepipe.CompileError, match=r"feed 'input_1:0' is not an input of signature "
                       r"'serving_default' .*expected one of \{attention_mask: int32\[\?,16\], input_ids: int32\[\?,16\]\}"):
        _compile(saved_models["text"], tmp_path / "out", model_feed_dict={"input_1:0": ids})
    with pytest.raises(corepipe.CompileError, match="feeds 'input_ids' and 'input_ids:0' both name input 'input_ids'"):
        _compile(saved_models["text"], tmp_path / "out", model_feed_dict={"input_ids": ids, "input_ids:0": ids})


def test_error_wrong_example_shape_or_dtype(saved_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(corepipe.CompileError, match=r"feed 'input_1:0' \(signature input 'keras_tensor_\d+'\): "
                       r"expected shape \[\?, 32, 32, 3\], got \[1, 100, 100, 3\]"):
        _compile(saved_models["cnn_fp16"], tmp_path / "out",
                 model_feed_dict={"input_1:0": np.zeros([1, 100, 100, 3], "float16")})
    with pytest.raises(corepipe.CompileError, match="expected dtype int32, got float32"):
        _compile(saved_models["text"], tmp_path / "out", model_feed_dict={"input_ids": np.ones((1, 16), np.float32)})
    with pytest.raises(corepipe.CompileError, match="values outside int32's range"):
        _compile(saved_models["text"], tmp_path / "out", model_feed_dict={"input_ids": np.full((1, 16), 2**40)})
    with pytest.raises(corepipe.CompileError, match=r"free dims besides the batch"):
        _compile(saved_models["free_dims"], tmp_path / "out")


def test_error_unknown_compiler_flag_before_any_conversion(tmp_path: Path) -> None:
    # The directory does not even exist: the flag is checked first, before TensorFlow is touched.
    with pytest.raises(corepipe.CompileError, match="unknown compiler argument '--bogus'"):
        _compile(tmp_path / "nope", tmp_path / "out", compiler_args=["--static-weights", "--bogus"])
    with pytest.raises(corepipe.CompileError, match=r"tensorflow-neuron options \['minimum_segment_size'\]"):
        _compile(tmp_path / "nope", tmp_path / "out", minimum_segment_size=4)


def test_error_op_tf2onnx_cannot_convert(saved_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(corepipe.CompileError, match=r"tf2onnx cannot convert 1 TensorFlow ops of signature "
                       r"'serving_default' .*: Igamma \("):
        _compile(saved_models["unsupported"], tmp_path / "out")


@pytest.mark.parametrize("missing", ["tf2onnx", "tensorflow"])
def test_error_frontend_not_installed(saved_models: dict[str, Path], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    with pytest.raises(corepipe.CompileError, match=r"needs tensorflow and tf2onnx .*pip install 'corepipe\[tensorflow\]'"):
        _compile(saved_models["text"], tmp_path / "out")
