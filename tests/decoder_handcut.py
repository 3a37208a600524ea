"""A decoder artifact cut by hand at layer boundaries (optimum GPT-2 only), for the runtime's
tests while the compiler's decoder cut (deccomp) is not merged. Stage k > 0 of optimum's graph still
reads ``input_ids`` and layer 0's past for their *shapes* (the causal mask); here they are made
from the stage's own hidden state and past inside the stage, so only the hidden state crosses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx.utils
from onnx import helper

from corepipe.artifact import Plan, StagePlan, TensorSpec, resolve_target
from corepipe.artifact.decoder import DecoderSpec, StatePair
from corepipe.artifact.writer import write_artifact


def _layers(model: onnx.ModelProto) -> int:
    return len([i for i in model.graph.input if i.name.startswith("past_key_values.") and i.name.endswith(".key")])


def hand_cut(model_path: Path, out_dir: Path, stages: int, *, max_sequences: int = 8, max_length: int = 64) -> Path:
    model = onnx.shape_inference.infer_shapes(onnx.load(str(model_path)))
    n_layers = _layers(model)
    info = {v.name: v for v in model.graph.input}
    kshape = [d.dim_value for d in info["past_key_values.0.key"].type.tensor_type.shape.dim]
    heads, hd = kshape[1], kshape[3]
    width = heads * hd
    vocab = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim][-1]
    per = [n_layers // stages + (1 if k < n_layers % stages else 0) for k in range(stages)]
    bounds = np.cumsum([0] + per).tolist()
    ex = onnx.utils.Extractor(model)
    pairs, graphs, plans = [], [], []
    step = ["attention_mask", "position_ids"]
    for k in range(stages):
        layers = range(bounds[k], bounds[k + 1])
        pasts = [f"past_key_values.{i}.{kv}" for i in layers for kv in ("key", "value")]
        presents = [p.replace("past_key_values", "present") for p in pasts]
        pairs += [StatePair(p, q, k, 0, 2, "float32", (heads, hd)) for p, q in zip(pasts, presents)]
        hid_in = f"/transformer/h.{bounds[k] - 1}/Add_1_output_0"
        hid_out = f"/transformer/h.{bounds[k + 1] - 1}/Add_1_output_0"
        ins = (["input_ids"] if k == 0 else [hid_in, "input_ids", "past_key_values.0.key"]) + step + pasts
        outs = (["logits"] if k == stages - 1 else [hid_out]) + presents
        g = ex.extract_model(list(dict.fromkeys(ins)), outs)
        if k > 0:  # shape-only readers of input_ids / layer 0's past: fed from inside the stage
            keep = [v for v in g.graph.input if v.name not in ("input_ids", "past_key_values.0.key")]
            del g.graph.input[:]
            g.graph.input.extend(keep)
            g.graph.initializer.append(helper.make_tensor("hc_zero_idx", onnx.TensorProto.INT64, [], [0]))
            g.graph.node.insert(0, helper.make_node("Gather", [hid_in, "hc_zero_idx"], ["hc_first"], axis=2))
            g.graph.node.insert(1, helper.make_node("Cast", ["hc_first"], ["hc_float"], to=onnx.TensorProto.FLOAT))
            g.graph.node.insert(2, helper.make_node("Mul", ["hc_float", "hc_zero_f"], ["hc_zeros"]))
            g.graph.initializer.append(helper.make_tensor("hc_zero_f", onnx.TensorProto.FLOAT, [], [0.0]))
            g.graph.node.insert(3, helper.make_node("Cast", ["hc_zeros"], ["input_ids"], to=onnx.TensorProto.INT64))
            g.graph.node.insert(4, helper.make_node("Identity", [pasts[0]], ["past_key_values.0.key"]))
        graphs.append(g)
        names_in = [v.name for v in g.graph.input]
        names_out = [v.name for v in g.graph.output]
        plans.append(StagePlan(index=k, node_start=k, node_end=k + 1, first_node="a", last_node="b", first_op="Add",
                               last_op="Add", inputs=tuple(names_in), outputs=tuple(names_out), carried=(),
                               weights=0, resident_bytes=10**9, estimated_s=0.0, device=0, core=k))
    spec = DecoderSpec("input_ids", "logits", "attention_mask", "position_ids", tuple(pairs), max_sequences, max_length)
    t = TensorSpec
    ids = t("input_ids", "int64", (1, max_length))
    logits = t("logits", "float32", (1, 1, vocab))
    hidden = [(t(f"/transformer/h.{bounds[b] - 1}/Add_1_output_0", "float32", (max_sequences, max_length, width)),)
              for b in range(1, stages)]
    plan = Plan(target=resolve_target("cpu"), inputs=(ids,), outputs=(logits,),
                boundaries=((ids,), *hidden, (logits,)), stages=tuple(plans), num_nodes=stages, decoder=spec)
    write_artifact(out_dir, plan, graphs, source_sha256="0" * 64)
    return out_dir
