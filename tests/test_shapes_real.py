"""Variable shapes on models as users export them: a BERT through torch.onnx's legacy exporter
with dynamic axes (what most published ONNX files are), and a torch module compiled with
torch.export's dynamic_shapes. Transparency against one onnxruntime session on the whole model
at each shape, on each engine, with dynamic graphs and with buckets."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IN_CI

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import corepipe
from corepipe.engines import cpu_math, missing_engine
from corepipe.engines.tolerance import close_enough

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leaks")]

VOCAB = 1000


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """A 2-layer BERT exported with dynamic batch and sequence axes by the legacy exporter."""
    from corepipe.frontends.transformers import build_transformers

    module, inputs = build_transformers("bert", seq=16, num_layers=2, hidden=64, heads=2, intermediate=128,
                                        vocab=VOCAB)
    names = list(inputs)
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes.update(last_hidden_state={0: "batch", 1: "sequence"}, pooler_output={0: "batch"})
    path = tmp_path_factory.mktemp("bert") / "bert.onnx"
    with torch.no_grad():
        torch.onnx.export(module, tuple(torch.from_numpy(v) for v in inputs.values()), str(path),
                          input_names=names, output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes=axes, opset_version=17, dynamo=False)
    return path, inputs


def _request(rng, batch, length):
    return {"input_ids": rng.integers(1, VOCAB, (batch, length)).astype(np.int64),
            "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64)}


def _check(out, ref, precision):
    for name, want in ref.items():
        assert out[name].shape == want.shape
        if precision == "fp32":
            np.testing.assert_allclose(out[name], want, rtol=1e-4, atol=1e-4)
        else:
            ok, figures = close_enough(out[name], want, precision)
            assert ok, (name, figures)


CASES = [("auto", "fp32", None), ("auto", "fp32", {"sequence": [8, 16, 32, 64]}), ("onnxruntime", "fp32", "auto")]
if missing_engine("openvino") is None and cpu_math().bf16:
    CASES.append(("auto", "bf16", {"sequence": [16, 64]}))


@pytest.mark.parametrize("engine,precision,buckets", CASES)
def test_legacy_export_bert_at_every_length(bert, tmp_path, engine, precision, buckets):
    import onnxruntime as ort

    path, inputs = bert
    cm = corepipe.compile(path, tmp_path / "a", example_inputs=inputs, num_cores=2, engine=engine,
                          precision=precision, dynamic_dims={"sequence": (1, 64), "batch": (1, 2)}, buckets=buckets)
    # the sequence axis of every tensor carrying it is named (symbolic inference, confirmed at both bounds)
    assert cm.outputs[0].describe() == "float32[batch=1..2,sequence=1..64,64]"
    if engine == "auto" and (missing_engine("openvino") is None or IN_CI):
        # "auto" takes OpenVINO wherever OpenVINO runs the stage right: here, every stage
        assert [st.engine for st in cm.stages] == ["openvino"] * 2, [(st.engine, st.fallback) for st in cm.stages]
    assert all(d is not None for b in cm.plan.boundaries for t in b if not t.is_static
               for d, (lo, hi) in zip(t.dims, t.ranges()) if lo != hi)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    requests = [_request(rng, b, n) for b, n in [(1, 1), (2, 64), (1, 7), (1, 16), (2, 33), (1, 64), (1, 2)]]
    with corepipe.load(cm.path, backend="inline") as pipe:
        for r in requests:
            _check(pipe.run(r), dict(zip(["last_hidden_state", "pooler_output"], sess.run(None, r))), precision)
    if isinstance(buckets, dict):
        assert "buckets" in {st.shape_mode for st in cm.stages}


def test_torch_module_with_export_dims(tmp_path):
    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(50, 16)
            self.proj = torch.nn.Linear(16, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.proj(torch.tanh(self.embed(ids)))

    torch.manual_seed(0)
    module = Tagger().eval()
    seq = torch.export.Dim("sequence", min=1, max=32)
    ids = torch.randint(0, 50, (1, 8))
    cm = corepipe.compile(module, tmp_path / "a", example_inputs={"ids": ids}, num_cores=2,
                          dynamic_dims={"ids": {1: seq}}, buckets=None)
    assert dict(cm.plan.shapes.dims) == {"sequence": (1, 32)}
    with corepipe.load(cm.path, backend="inline") as pipe:
        for n in (1, 9, 32):
            x = torch.randint(0, 50, (1, n))
            with torch.no_grad():
                want = module(x).numpy()
            got = pipe.run({"ids": x.numpy()})
            np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(corepipe.CompileError, match=r"Dim 'sequence' has no max"):
        corepipe.compile(module, tmp_path / "b", example_inputs={"ids": ids},
                         dynamic_dims={"ids": {1: torch.export.Dim("sequence")}})
