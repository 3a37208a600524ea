"""Decoder compile options and their errors (issue 25, part 1): ``state=`` (auto, explicit, None),
``max_sequences=`` / ``max_length=`` sizing the KV that each stage's memory holds, a cut through a
pair's layer, and dims that start at 0 or are sums on the plain (``state=None``) path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from decoders import decoder_model_or_skip, session

import corepipe
from corepipe.artifact import TensorSpec, check_feeds
from corepipe.artifact.dims import check_dims, dim_value, parse_dim_option
from corepipe.compiler.decoder.decoding import analyze_decoder, detect_decoder
from corepipe.errors import CompileError, DoesNotFitError, InputError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def gpt2() -> Path:
    return decoder_model_or_skip("gpt2")


def _compile(model: Path, out: Path, **kw: object) -> corepipe.CompiledModel:
    args: dict[str, object] = dict(engine="onnxruntime", max_sequences=4, max_length=64)
    args.update(kw)
    return corepipe.compile(model, out, **args)  # type: ignore[arg-type]


def test_explicit_state_equals_auto(gpt2: Path, tmp_path: Path) -> None:
    auto = _compile(gpt2, tmp_path / "a", num_cores=2)
    dec = auto.plan.decoder
    assert dec is not None and len(dec.pairs) == 4
    state = {p.present: p.past for p in dec.pairs}
    given = _compile(gpt2, tmp_path / "b", num_cores=2, state=state)
    assert given.plan.decoder == dec and given.plan.boundaries == auto.plan.boundaries
    assert dec.max_sequences == 4 and dec.max_length == 64
    for k in range(2):  # rows x tokens x pairs x heads x head_dim x fp32
        assert dec.kv_bytes(k) == 4 * 64 * len(dec.pairs_of(k)) * 4 * 16 * 4


def test_defaults_a_new_user_never_sets(gpt2: Path) -> None:
    dm = detect_decoder(gpt2, "auto", None, None, None)
    assert dm is not None
    assert dm.max_sequences == 16 and dm.max_length == 256  # n_positions of the config beside the model
    assert dm.dims["past_sequence_length"] == (0, 255)
    assert dm.dims["past_sequence_length + sequence_length"] == (1, 256)


def test_state_none_compiles_a_plain_plan(gpt2: Path, tmp_path: Path) -> None:
    cm = _compile(gpt2, tmp_path / "a", num_cores=2, state=None,
                  dynamic_dims={"past_sequence_length": (0, 31), "sequence_length": (1, 16), "batch_size": (1, 2)})
    assert cm.plan.decoder is None
    assert cm.plan.shapes is not None
    assert cm.plan.shapes.dims["past_sequence_length + sequence_length"] == (1, 47)  # follows its parts
    assert not cm.plan.shapes.buckets and any("related by a sum" in n for n in cm.plan.notes)
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(1, 1000, (1, 3)).astype(np.int64),
             "attention_mask": np.ones((1, 3), np.int64), "position_ids": np.arange(3)[None].astype(np.int64)}
    feeds |= {f"past_key_values.{i}.{kv}": np.zeros((1, 4, 0, 16), np.float32) for i in range(2)
              for kv in ("key", "value")}
    with cm.load("inline") as pipe:
        out = pipe.run(feeds)
    want = session(gpt2).run(["logits"], feeds)[0]
    np.testing.assert_allclose(out["logits"], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("state, message", [
    ({"present.0.key": "past_key_values.9.key"}, "has no input 'past_key_values.9.key'"),
    ({"logitz": "past_key_values.0.key"}, "has no output 'logitz'"),
    ({"present.0.key": "past_key_values.0.key", "present.1.key": "past_key_values.0.key"}, "each past pairs"),
    ({"present.0.key": "attention_mask"}, "same dtype and rank"),
    ("yes", "state must be 'auto'"),
])
def test_bad_state_map(gpt2: Path, tmp_path: Path, state: object, message: str) -> None:
    with pytest.raises(CompileError, match=message):
        _compile(gpt2, tmp_path / "a", num_cores=2, state=state)


def test_cut_through_a_pair_layer(gpt2: Path, tmp_path: Path) -> None:
    dm = detect_decoder(gpt2, "auto", 4, 64, None)
    assert dm is not None
    graph, _ = analyze_decoder(dm)
    inside = next(p for p, why in graph.forbidden.items() if "split the layer" in why)
    with pytest.raises(CompileError, match=r"cannot cut before node \d+: .*split the layer of state pair"):
        _compile(gpt2, tmp_path / "a", cuts=[inside])
    too_many = sum(1 for p in range(1, graph.n) if p not in graph.forbidden) + 2
    with pytest.raises(CompileError, match="hidden state alone cross"):
        _compile(gpt2, tmp_path / "b", num_cores=too_many)


def test_kv_counts_in_core_memory(gpt2: Path, tmp_path: Path) -> None:
    small = _compile(gpt2, tmp_path / "a", num_cores="auto", core_memory="3MiB", max_sequences=1, max_length=256)
    assert small.num_cores == 1
    big = _compile(gpt2, tmp_path / "b", num_cores="auto", core_memory="3MiB", max_sequences=16, max_length=256)
    dec = big.plan.decoder
    assert dec is not None and big.num_cores > 1
    for st in big.stages:
        assert dec.kv_bytes(st.index) <= st.resident_bytes <= 3 * 2**20
    with pytest.raises(DoesNotFitError, match=r"KV store: KV 8.0 MiB in all: 32 sequences x 256 tokens") as err:
        _compile(gpt2, tmp_path / "c", num_cores=2, core_memory="3MiB", max_sequences=32, max_length=256)
    assert "max_sequences" in str(err.value)


def test_bad_bounds(gpt2: Path, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="max_sequences must be a positive int"):
        _compile(gpt2, tmp_path / "a", max_sequences=0)
    with pytest.raises(CompileError, match="balance='estimate'"):
        _compile(gpt2, tmp_path / "a", balance="measure")


def test_dims_from_zero_and_sums() -> None:
    assert check_dims({"past": (0, 95)}) == {"past": (0, 95)}
    assert check_dims({"past + sequence": (1, 128)}) == {"past + sequence": (1, 128)}
    assert parse_dim_option("past + sequence=1:128") == ("past + sequence", (1, 128))
    assert dim_value("past + sequence", {"past": 3, "sequence": 2}) == 5
    with pytest.raises(ValueError, match="max >= 1"):
        check_dims({"past": (0, 0)})
    with pytest.raises(ValueError, match="not a symbolic dim name"):
        check_dims({"past + ": (0, 4)})
    mask = TensorSpec("mask", "int64", (2, 16), dims=("b", "p + s"), min_shape=(1, 1))
    ids = TensorSpec("ids", "int64", (2, 8), dims=("b", "s"), min_shape=(1, 1))
    past = TensorSpec("past", "float32", (2, 15), dims=("b", "p"), min_shape=(1, 0))
    ok = {"mask": np.ones((1, 5), np.int64), "ids": np.ones((1, 2), np.int64), "past": np.ones((1, 3), np.float32)}
    assert set(check_feeds([mask, ids, past], ok)) == {"mask", "ids", "past"}
    with pytest.raises(InputError, match=r"dim 'p \+ s' is 6, but its parts add up to 5 \(p=3, s=2\)"):
        check_feeds([mask, ids, past], ok | {"mask": np.ones((1, 6), np.int64)})


def test_cli_compile_and_inspect_show_the_decoder(gpt2: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from corepipe.cli import app

    runner = CliRunner()
    out = tmp_path / "art"
    res = runner.invoke(app, ["compile", str(gpt2), "-o", str(out), "-n", "2", "-e", "onnxruntime",
                              "--max-sequences", "4", "--max-length", "64", "--state", "auto"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "decoder: 4 state pairs; KV 256.0 KiB in all for max_sequences 4 x max_length 64" in text
    assert "past_sequence_length 0..63" in text and "past_sequence_length + sequence_length 1..64" in text
    assert "stage 0:" in text and "KV " in text
    res = runner.invoke(app, ["inspect", str(gpt2)])
    assert "state pairs: 4 (past_key_values.0.key -> present.0.key, ...)" in " ".join(res.output.split())
    res = runner.invoke(app, ["inspect", str(out), "--json"])
    data = json.loads(res.output)
    assert data["decoder"]["max_length"] == 64 and len(data["decoder"]["pairs"]) == 4
    res = runner.invoke(app, ["compile", str(gpt2), "-o", str(tmp_path / "b"), "--state", "present.0.key"])
    assert res.exit_code != 0 and "PRESENT=PAST" in res.output
    res = runner.invoke(app, ["compile", str(gpt2), "-o", str(tmp_path / "c"), "-n", "2", "-e", "onnxruntime",
                              "--state", "none", "--dynamic", "past_sequence_length=0:15",
                              "--dynamic", "sequence_length=1:8", "--dynamic", "batch_size=1:2"])
    assert res.exit_code == 0, res.output
    assert "decoder:" not in res.output


@pytest.mark.parametrize("dims, buckets, message", [
    ({"past_sequence_length + sequence_length": (1, 64), "batch_size": (1, 2)}, "auto",
     r"is the sum of \['past_sequence_length', 'sequence_length'\]: give their ranges instead"),
    ({"past_sequence_length": (0, 15), "sequence_length": (1, 8), "batch_size": (1, 2),
      "past_sequence_length + sequence_length": (1, 64)}, "auto", r"so its range is \(1, 23\), not \(1, 64\)"),
    ({"past_sequence_length": (0, 15), "sequence_length": (1, 8), "batch_size": (1, 2)}, {"sequence_length": [4, 8]},
     "padding one would change the other"),
])
def test_plain_path_sum_dims_errors(gpt2: Path, tmp_path: Path, dims: dict[str, tuple[int, int]], buckets: object,
                                    message: str) -> None:
    with pytest.raises(CompileError, match=message):
        _compile(gpt2, tmp_path / "a", num_cores=2, state=None, dynamic_dims=dims, buckets=buckets)
