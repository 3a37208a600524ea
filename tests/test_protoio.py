"""stream_load parses exactly what onnx.load parses, without the 2x peak, and refuses junk."""

from __future__ import annotations

import onnx
import pytest

import corepipe
from corepipe import zoo
from corepipe.artifact.protoio import stream_load


@pytest.mark.parametrize("external", [False, True])
def test_stream_load_equals_onnx_load(tmp_path, external):
    model, _ = zoo.get("tiny_cnn")
    path = tmp_path / "m.onnx"
    onnx.save_model(model, str(path), save_as_external_data=external, location="m.data", size_threshold=0)
    a = stream_load(path).SerializeToString(deterministic=True)
    b = onnx.load(str(path)).SerializeToString(deterministic=True)
    assert a == b


def test_truncated_or_junk_file_is_a_clear_compile_error(tmp_path):
    model, feeds = zoo.get("mlp")
    data = model.SerializeToString()
    for name, blob in {"truncated": data[: len(data) // 2], "junk": b"\xff" * 64}.items():
        path = tmp_path / f"{name}.onnx"
        path.write_bytes(blob)
        with pytest.raises(ValueError):
            stream_load(path)
        with pytest.raises(corepipe.CompileError, match="cannot read"):
            corepipe.compile(path, tmp_path / f"{name}_out", example_inputs=feeds, num_cores=1)


def test_model_whose_external_data_leaves_its_directory_is_refused(tmp_path):
    model, feeds = zoo.get("mlp")
    sub = tmp_path / "sub"
    sub.mkdir()
    onnx.save_model(model, str(sub / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    (tmp_path / "secret.data").write_bytes((sub / "m.data").read_bytes())
    evil = onnx.load(str(sub / "m.onnx"), load_external_data=False)
    for t in evil.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret.data"
    onnx.save(evil, str(sub / "evil.onnx"))
    with pytest.raises(corepipe.CompileError, match="outside"):
        corepipe.compile(sub / "evil.onnx", tmp_path / "out", example_inputs=feeds, num_cores=1)
