"""``corepipe.compile(module, ...)``: torch modules and transformers models exported internally;
the pipeline's outputs equal torch's own (eval mode) at fp32 tolerance, with meaningful names."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("onnxscript")

import corepipe
from corepipe.engines import cpu_math
from corepipe.engines.tolerance import close_enough

TINY_BERT = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 2,
             "intermediate_size": 128, "vocab_size": 1000, "attn_implementation": "eager"}


def _mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 32),
                               torch.nn.ReLU(), torch.nn.Linear(32, 4))


def test_module_with_positional_examples(tmp_path: Path, no_leaks: None,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    module = _mlp()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the export goes by default
    cm = corepipe.compile(module, tmp_path / "mlp", example_inputs=(np.zeros((1, 8)),), num_cores=2)
    assert list(scratch.glob("corepipe_export_*")) == []  # the exported file is not left behind
    # named after forward's parameter; numpy's float64 example taken as the module's float32
    assert [(s.name, s.shape, s.dtype) for s in cm.inputs] == [("input", (1, 8), "float32")]
    assert [(s.name, s.shape) for s in cm.outputs] == [("output", (1, 4))]
    assert cm.num_cores == 2 and module.training  # the module's mode is restored
    xs = [np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32) for i in range(4)]
    with corepipe.load(cm.path) as pipe:
        outputs = list(pipe.map({"input": x} for x in xs))
    module.eval()
    with torch.no_grad():
        for x, got in zip(xs, outputs):
            np.testing.assert_allclose(got["output"], module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_bert_model_output_keys_name_the_outputs(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = transformers.BertModel(transformers.BertConfig(**TINY_BERT))  # train mode, as built
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(0, 1000, (1, 16)), "attention_mask": np.ones((1, 16), np.int64)}
    cm = corepipe.compile(model, tmp_path / "bert", example_inputs=feeds, num_cores=2,
                          export_path=tmp_path / "bert.onnx")
    assert (tmp_path / "bert.onnx").is_file()  # kept because it was asked for
    assert [s.name for s in cm.inputs] == ["input_ids", "attention_mask"]
    assert [s.name for s in cm.outputs] == ["last_hidden_state", "pooler_output"]
    model.eval()
    with corepipe.load(cm.path, backend="inline") as pipe:
        for _ in range(3):
            request = {"input_ids": rng.integers(0, 1000, (1, 16)),
                       "attention_mask": (rng.random((1, 16)) < 0.7).astype(np.int64)}
            got = pipe.run(request)
            with torch.no_grad():
                ref = model(**{k: torch.from_numpy(v) for k, v in request.items()})
            for name in ("last_hidden_state", "pooler_output"):
                np.testing.assert_allclose(got[name], ref[name].numpy(), rtol=1e-4, atol=1e-5)


def test_gpt2_exports_without_cache_and_names_logits(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=1000,
                                     bos_token_id=999, eos_token_id=999)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.config.use_cache  # the default: exported with use_cache=False
    ids = torch.randint(0, 1000, (1, 16))
    cm = corepipe.compile(model, tmp_path / "gpt2", example_inputs=(ids,), num_cores=2)
    assert [s.name for s in cm.outputs] == ["logits"]
    with corepipe.load(cm.path, backend="inline") as pipe, torch.no_grad():
        np.testing.assert_allclose(pipe.run({"input_ids": ids.numpy()})["logits"],
                                   model(ids).logits.numpy(), rtol=1e-4, atol=1e-4)


def test_output_names_and_float16_module(tmp_path: Path) -> None:
    module = _mlp().half()
    x = torch.randn(1, 8).half()
    cm = corepipe.compile(module, tmp_path / "half", example_inputs={"x": x}, output_names=["scores"],
                          num_cores=2)
    assert [(s.name, s.dtype) for s in cm.inputs] == [("x", "float16")]
    assert [(s.name, s.dtype) for s in cm.outputs] == [("scores", "float16")]
    # fp16 examples: fp16 where the CPU has fp16 math, else precision "auto" (bf16 where it has it),
    # against the fp16 weights in fp32.
    math = cpu_math()
    precision = "fp16" if math.fp16 else "bf16" if math.bf16 else "fp32"
    assert {st.precision for st in cm.stages} <= {precision, "fp32"} and any(
        st.precision == precision for st in cm.stages)
    with corepipe.load(cm.path, backend="inline") as pipe, torch.no_grad():
        got = pipe.run({"x": x.numpy()})["scores"]
        ref = copy.deepcopy(module).float()(x.float()).numpy()  # .float() works in place
    if precision == "fp32":
        np.testing.assert_allclose(got.astype(np.float32), ref, rtol=0, atol=2e-3)  # fp16 rounding
    else:
        ok, figures = close_enough(got.astype(np.float32), ref, precision)
        assert ok, figures
    asked = "fp16" if math.fp16 else "auto"
    assert any(f"fp16 example inputs: precision '{asked}'" in n for n in cm.plan.notes)
    exact = corepipe.compile(module, tmp_path / "exact", example_inputs={"x": x}, precision="fp32", num_cores=2)
    assert {st.precision for st in exact.stages} == {"fp32"}  # asked for: kept


def test_module_errors(tmp_path: Path) -> None:
    module = _mlp()
    with pytest.raises(corepipe.CompileError, match=r"needs example inputs .*example_inputs=\(x,\)"):
        corepipe.compile(module, tmp_path / "a")
    with pytest.raises(corepipe.CompileError, match=r"output_names has 2 names \['a', 'b'\] but Sequential returns 1"):
        corepipe.compile(module, tmp_path / "a", example_inputs=(torch.randn(1, 8),), output_names=["a", "b"])
    with pytest.raises(corepipe.CompileError, match=r"Sequential fails on the example inputs \(RuntimeError: mat1"):
        corepipe.compile(module, tmp_path / "a", example_inputs=(torch.randn(1, 5),))  # wrong width

    class DataDependent(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[: int(x.sum().item() > 0) + 1] * 2

    with pytest.raises(corepipe.CompileError, match=r"torch.onnx.export \(dynamo\) cannot export DataDependent: "
                       "GuardOnDataDependentSymNode"):
        corepipe.compile(DataDependent(), tmp_path / "a", example_inputs=(torch.randn(3, 4),))
    with pytest.raises(corepipe.CompileError, match=r"output_names= names the outputs of a torch module"):
        corepipe.compile(str(tmp_path / "m.onnx"), tmp_path / "a", output_names=["y"])
