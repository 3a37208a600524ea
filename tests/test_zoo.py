"""Every built-in zoo model is a valid opset-17 model that onnxruntime runs to finite outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from corepipe import zoo

SMALL_BERT = {
    "num_layers": 2,
    "hidden": 128,
    "heads": 2,
    "intermediate": 256,
    "vocab": 1000,
    "seq": 16,
}

# name -> (builder kwargs, {output name: shape})
CASES: dict[str, tuple[dict, dict[str, list[int]]]] = {
    "resnet50": ({"image_size": 64}, {"logits": [1, 1000]}),
    "densenet121": ({"image_size": 64}, {"logits": [1, 1000]}),
    "inception_v1": ({"image_size": 64}, {"logits": [1, 1000]}),
    "bert": (SMALL_BERT, {"last_hidden_state": [1, 16, 128], "pooler_output": [1, 128]}),
    "mlp": ({}, {"logits": [1, 10]}),
    "tiny_cnn": ({}, {"logits": [1, 10]}),
}


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def test_every_builtin_is_covered() -> None:
    assert sorted(CASES) == zoo.names() == sorted(zoo.BUILTIN)


@pytest.mark.parametrize("name", sorted(CASES))
def test_builtin_model_is_valid_and_runs(name: str) -> None:
    kwargs, shapes = CASES[name]
    model, feeds = zoo.get(name, **kwargs)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    # static shapes everywhere on the interface
    for vi in [*model.graph.input, *model.graph.output]:
        assert all(d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim), vi.name
    assert [vi.name for vi in model.graph.output] == list(shapes)
    outs = _run(model, feeds)
    for out_name, shape in shapes.items():
        y = outs[out_name]
        assert list(y.shape) == shape
        assert y.dtype == np.float32
        assert np.isfinite(y).all()
        assert float(y.std()) > 0  # not all identical


def test_get_is_deterministic() -> None:
    m1, f1 = zoo.get("bert", **SMALL_BERT)
    m2, f2 = zoo.get("bert", **SMALL_BERT)
    assert m1.SerializeToString() == m2.SerializeToString()
    assert f1.keys() == f2.keys() == {"input_ids", "attention_mask"}
    for k in f1:
        np.testing.assert_array_equal(f1[k], f2[k])
    assert f1["input_ids"].dtype == np.int64
    assert f1["input_ids"].min() >= 0 and f1["input_ids"].max() < SMALL_BERT["vocab"]
    assert (f1["attention_mask"] == 1).all()
    m3, _ = zoo.get("bert", **SMALL_BERT, seed=1)
    assert m3.SerializeToString() != m1.SerializeToString()


def test_resnet50_topology() -> None:
    model = zoo.resnet50(image_size=64)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Conv") == 53
    assert ops.count("BatchNormalization") == 53
    assert ops.count("Add") == 16
    assert ops.count("Gemm") == 1
    n_params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    bn_stats = 2 * sum(int(np.prod(t.dims)) for t in model.graph.initializer if "running" in t.name)
    assert n_params - bn_stats // 2 == 25_557_032  # torchvision's resnet50 parameter count


def test_densenet_and_inception_topology() -> None:
    dn = [n.op_type for n in zoo.densenet121(image_size=64).graph.node]
    assert dn.count("Conv") == 120 and dn.count("AveragePool") == 3
    inc = [n.op_type for n in zoo.inception_v1(image_size=64).graph.node]
    assert inc.count("Concat") == 9 and inc.count("Conv") == 57


def test_bert_mask_is_applied() -> None:
    model, feeds = zoo.get("bert", **SMALL_BERT)
    full = _run(model, feeds)["last_hidden_state"]
    masked = dict(feeds, attention_mask=feeds["attention_mask"].copy())
    masked["attention_mask"][0, -4:] = 0
    out = _run(model, masked)["last_hidden_state"]
    assert not np.allclose(out[0, :12], full[0, :12])


def test_unknown_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match="resnet50"):
        zoo.get("resnet51")


@pytest.mark.parametrize("image_size", [0, 100])
def test_bad_image_size(image_size: int) -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        zoo.resnet50(image_size=image_size)
