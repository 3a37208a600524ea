"""Variable shapes as data and arithmetic, without engines or processes: tensor specs with ranges,
plans and manifests that round-trip, request checks, padding, shape profiles, and the bucket
chooser on numbers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import corepipe
from corepipe.artifact.dims import ShapeProfile, Shapes, next_bucket, parse_bucket_option, parse_dim_option
from corepipe.artifact.padding import pad_feeds, trim_outputs
from corepipe.artifact.plan import TensorSpec
from corepipe.artifact.signature import check_feeds, feed_dims
from corepipe.artifact.sizes import parse_duration
from corepipe.compiler.shaping.buckets import (
    ModeTimes,
    buckets_win,
    candidate_sizes,
    choose_sizes,
    decide,
    expected,
)

IDS = TensorSpec("input_ids", "int64", (4, 128), dims=("batch", "sequence"), min_shape=(1, 1))
MASK = TensorSpec("mask", "float32", (4, 1, 128), dims=("batch", None, "sequence"), min_shape=(1, 1, 1))
OUT = TensorSpec("h", "float32", (4, 128, 8), dims=("batch", "sequence", None), min_shape=(1, 1, 8))


def test_tensor_spec_ranges_round_trip_and_read():
    assert IDS.describe() == "int64[batch=1..4,sequence=1..128]"
    assert IDS.nbytes == 4 * 128 * 8  # slots are sized for the max
    assert TensorSpec.from_dict(json.loads(json.dumps(IDS.to_dict()))) == IDS
    assert OUT.shape_for({"batch": 2, "sequence": 37}) == (2, 37, 8)
    assert OUT.shape_for({"batch": 2}) is None
    static = TensorSpec("x", "float32", (1, 3))
    assert static.to_dict() == {"name": "x", "dtype": "float32", "shape": [1, 3]}  # as before dynamic dims
    assert TensorSpec.from_dict({"name": "x", "dtype": "float32", "shape": [1, 3]}).is_static
    # a min_shape equal to the shape is a static tensor
    assert TensorSpec.from_dict({**static.to_dict(), "min_shape": [1, 3], "dims": [None, None]}).is_static


@pytest.mark.parametrize("bad", [
    {"min_shape": [1], "dims": ["b", None]},
    {"min_shape": [2, 1], "dims": [None, None]},
    {"min_shape": [1, 1], "dims": [3, None]},
])
def test_tensor_spec_refuses_malformed_ranges(bad):
    with pytest.raises(ValueError):
        TensorSpec.from_dict({"name": "x", "dtype": "float32", "shape": [1, 3], **bad})


def test_check_feeds_names_input_dim_range_and_value():
    ok = check_feeds([IDS], {"input_ids": np.zeros((2, 37), np.int64)})
    assert feed_dims([IDS], ok) == {"batch": 2, "sequence": 37}
    with pytest.raises(corepipe.InputError) as err:
        check_feeds([IDS], {"input_ids": np.zeros((2, 300), np.int64)})
    assert str(err.value).startswith("input 'input_ids': dim 'sequence' (axis 1) is 300, outside its range 1..128")
    with pytest.raises(corepipe.InputError, match=r"inputs disagree on dim 'sequence': 'input_ids' has 37, 'mask' has 36"):
        check_feeds([IDS, MASK], {"input_ids": np.zeros((2, 37), np.int64), "mask": np.zeros((2, 1, 36), np.float32)})
    with pytest.raises(corepipe.InputError, match=r"disagree on dim 'batch'"):  # a ragged batch
        check_feeds([IDS, MASK], {"input_ids": np.zeros((3, 5), np.int64), "mask": np.zeros((2, 1, 5), np.float32)})
    with pytest.raises(corepipe.InputError, match=r"convert with .astype\(np.int64\)"):
        check_feeds([IDS], {"input_ids": np.zeros((2, 5), np.int32)})
    with pytest.raises(corepipe.InputError, match="it takes 2 dims"):
        check_feeds([IDS], {"input_ids": np.zeros((5,), np.int64)})


def test_shapes_validate_and_round_trip():
    shapes = Shapes(dims={"sequence": (1, 128)}, buckets={"sequence": (16, 64, 128)}, pad_values={"input_ids": 0},
                    profile=ShapeProfile.lognormal("sequence", 24, 128, samples=64))
    assert Shapes.from_dict(json.loads(json.dumps(shapes.to_dict()))) == shapes
    for bad in ({"buckets": {"sequence": (16, 64)}}, {"buckets": {"length": (128,)}}, {"batch": "length"},
                {"dims": {"sequence": (0, 0)}}, {"dims": {"sequence": (3, 2)}}):  # from 0 is fine (a past), empty is not
        with pytest.raises(ValueError):
            Shapes(**{"dims": {"sequence": (1, 128)}, **bad}).validate()


def test_plan_with_shapes_writes_version_3_and_v2_cannot_name_them(tmp_path):
    from corepipe.artifact.manifest import manifest_version

    art = corepipe.compile(_tiny(tmp_path), tmp_path / "a", example_inputs={"x": np.ones((1, 4), np.float32)},
                           num_cores=1, engine="onnxruntime", dynamic_dims={"n": (1, 8)}, buckets=None)
    assert manifest_version(art.plan) == 3
    m = json.loads((art.path / "manifest.json").read_text())
    assert m["plan"]["inputs"][0] == {"name": "x", "dtype": "float32", "shape": [1, 8], "min_shape": [1, 1],
                                      "dims": [None, "n"]}
    m["format_version"] = 2
    (art.path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(corepipe.ArtifactError, match="cannot name dynamic dims; they came in version 3"):
        corepipe.load(art.path, backend="inline")


def _tiny(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "t",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "n"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "n"])])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_pad_then_trim_gives_back_the_request():
    shapes = Shapes(dims={"batch": (1, 4), "sequence": (1, 128)}, buckets={"sequence": (16, 32, 128)},
                    pad_values={"input_ids": 7})
    feeds = {"input_ids": np.arange(10, dtype=np.int64).reshape(2, 5)}
    padded, values = pad_feeds([IDS], feeds, shapes)
    assert padded["input_ids"].shape == (2, 16) and (padded["input_ids"][:, 5:] == 7).all()
    assert values == {"batch": 2, "sequence": 5}
    out = {"h": np.ones((2, 16, 8), np.float32)}
    assert trim_outputs([OUT], out, values, ["sequence"])["h"].shape == (2, 5, 8)
    same, _ = pad_feeds([IDS], {"input_ids": np.zeros((1, 32), np.int64)}, shapes)
    assert same["input_ids"].shape == (1, 32)


def test_shape_profiles():
    p = ShapeProfile.parse("sequence~24:128")
    assert p.names == ["sequence"] and 18 <= p.typical()["sequence"] <= 30
    assert ShapeProfile.parse("sequence~24:128") == p  # a fixed seed: the same traffic every time
    assert all(1 <= d["sequence"] <= 128 for d in p.sample(100, seed=1))
    assert ShapeProfile.parse("sequence=8:11").weighted() == [({"sequence": v}, 0.25) for v in range(8, 12)]
    assert ShapeProfile.parse("sequence=16,16,128").typical() == {"sequence": 16}
    assert ShapeProfile.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match="NAME=LO:HI"):
        ShapeProfile.parse("sequence")


def test_options_and_durations():
    assert parse_dim_option("sequence=1:128") == ("sequence", (1, 128))
    assert parse_bucket_option("sequence=16, 32,64") == ("sequence", (16, 32, 64))
    with pytest.raises(ValueError, match="NAME=MIN:MAX"):
        parse_dim_option("sequence=128")
    assert parse_duration("500us") == pytest.approx(5e-4) and parse_duration("2ms") == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="500us"):
        parse_duration("-1ms")
    assert next_bucket((16, 32, 128), 17) == 32


def test_bucket_chooser_minimises_expected_padded_time():
    times = {8: 1.0, 16: 2.0, 32: 4.0, 64: 8.0, 128: 16.0}
    weights = {5: 0.5, 20: 0.3, 100: 0.2}
    best = choose_sizes(times, weights, 3)
    assert best == (8, 32, 128) and best[-1] == 128
    assert expected(times, weights, best) == pytest.approx(0.5 * 1 + 0.3 * 4 + 0.2 * 16)
    assert choose_sizes(times, weights, 1) == (128,)
    # more buckets are never worse, and one more is taken only where it helps
    assert choose_sizes(times, {100: 1.0}, 4) == (128,)
    assert candidate_sizes(1, 20) == [1, 2, 3, 4, 6, 8, 12, 16, 20]


def test_decide_weighs_the_slowest_stage_and_memory():
    grid = candidate_sizes(1, 128)
    fast_static = ModeTimes({v: v * 1.2 for v in grid}, {v: float(v) for v in grid})
    native_only = ModeTimes({v: float(v) for v in grid}, {v: float(v) for v in grid}, fits=0)
    uniform = {v: 1.0 / 128 for v in range(1, 129)}
    d = decide([fast_static, fast_static], uniform)
    assert d.modes == ("buckets", "buckets") and buckets_win(d)
    d = decide([fast_static, native_only], uniform)  # no copy fits: that stage runs the buckets natively
    assert d.modes[1] == "dynamic"
    same = ModeTimes({v: float(v) for v in grid}, {v: float(v) for v in grid})
    assert not buckets_win(decide([same], uniform))  # padding only costs when static is no faster
    forced = decide([same], uniform, sizes=[64, 128])
    assert forced.sizes == (64, 128)
    assert len(decide([fast_static], uniform, max_buckets=3).sizes) <= 3
