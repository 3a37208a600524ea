"""The transformers front-end exports tiny BERT and GPT-2 that onnxruntime runs like torch."""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

from corepipe.frontends import build_transformers, export_torch, export_transformers

TINY = {"seq": 16, "num_layers": 2, "hidden": 64, "heads": 2, "vocab": 1000}


def _ort(path: pathlib.Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _static(model: onnx.ModelProto) -> bool:
    vis = [*model.graph.input, *model.graph.output]
    return all(d.HasField("dim_value") for vi in vis for d in vi.type.tensor_type.shape.dim)


@pytest.mark.parametrize(
    ("arch", "inputs", "outputs"),
    [
        (
            "bert",
            ["input_ids", "attention_mask", "token_type_ids"],
            ["last_hidden_state", "pooler_output"],
        ),
        ("gpt2", ["input_ids", "attention_mask"], ["logits"]),
    ],
)
def test_export_transformers_matches_torch(
    tmp_path: pathlib.Path, arch: str, inputs: list[str], outputs: list[str]
) -> None:
    path, feeds = export_transformers(arch, tmp_path / f"{arch}.onnx", **TINY)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == inputs == list(feeds)
    assert [o.name for o in model.graph.output] == outputs
    assert model.opset_import[0].version == 17
    assert _static(model)
    got = _ort(path, feeds)

    module, ref_inputs = build_transformers(arch, **TINY)
    for k in feeds:
        np.testing.assert_array_equal(feeds[k], ref_inputs[k])
    with torch.no_grad():
        ref = module(*(torch.from_numpy(v) for v in ref_inputs.values()))
    ref = ref if isinstance(ref, tuple) else (ref,)
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == tuple(r.shape)
        np.testing.assert_allclose(g, r.numpy(), atol=1e-4, rtol=0)


def test_gpt2_tied_embedding_is_one_initializer(tmp_path: pathlib.Path) -> None:
    path, _ = export_transformers("gpt2", tmp_path / "gpt2.onnx", **TINY)
    model = onnx.load(str(path))
    tables = [t.name for t in model.graph.initializer if list(t.dims) == [1000, 64]]
    assert len(tables) == 1
    users = [n.op_type for n in model.graph.node if tables[0] in n.input]
    assert "Gather" in users and len(users) == 2


def test_export_torch_plain_module(tmp_path: pathlib.Path) -> None:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(1, 8)
    path = export_torch(module, {"x": x}, tmp_path / "sub" / "mlp.onnx", output_names=["y"])
    assert path.exists()
    (got,) = _ort(path, {"x": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(got, module(x).numpy(), atol=1e-5)


def test_unknown_arch(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="bert"):
        export_transformers("llama", tmp_path / "x.onnx")
