"""What the decoder benchmark's peers load, made once beside the corpus model
(`tests/decoders.decoder_dir`): ``ortgenai/`` (the same model.onnx, linked, with a hand-written
genai_config.json: onnxruntime-genai's builder cannot read GPT-2) and ``openvino/``
(optimum-intel's ``optimum-cli export openvino --task text-generation-with-past --weight-format
fp32`` of the same ``save_pretrained`` weights, in the openvino-genai venv)."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests import decoders

OVGENAI = Path(os.environ.get("COREPIPE_OVGENAI_VENV", "/tmp/corepipe-ovgenai"))
ORTGENAI = Path(os.environ.get("COREPIPE_ORTGENAI_VENV", "/tmp/corepipe-ortgenai"))
PYTHONS = {"ort": sys.executable, "ov": sys.executable, "corepipe": sys.executable, "corepipe-1x2": sys.executable,
           "corepipe-tuned": sys.executable,
           "corepipe-ov": sys.executable, "corepipe-before": sys.executable,
           "ortgenai": str(ORTGENAI / "bin" / "python"), "ovgenai": str(OVGENAI / "bin" / "python")}


def genai_config(model_dir: Path) -> dict:
    """onnxruntime-genai's config for an optimum ``text-generation-with-past`` export: model type
    "llama" (a plain decoder with key/value pairs per layer) and the export's names."""
    recipe = json.loads((model_dir / "recipe.json").read_text())
    heads = recipe["heads"]
    return {
        "model": {
            "bos_token_id": decoders.EOS_ID, "eos_token_id": decoders.EOS_ID, "pad_token_id": decoders.EOS_ID,
            "context_length": recipe["positions"], "vocab_size": recipe["vocab"], "type": "llama",
            "decoder": {
                "filename": "model.onnx", "head_size": recipe["width"] // heads, "hidden_size": recipe["width"],
                "num_attention_heads": heads, "num_key_value_heads": recipe.get("kv_heads", heads),
                "num_hidden_layers": recipe["layers"],
                "session_options": {"log_id": "onnxruntime-genai", "intra_op_num_threads": 2,
                                    "inter_op_num_threads": 1, "provider_options": []},
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"}}},
        "search": {"diversity_penalty": 0.0, "do_sample": False, "early_stopping": True, "length_penalty": 1.0,
                   "max_length": recipe["positions"], "min_length": 0, "no_repeat_ngram_size": 0,
                   "num_beams": 1, "num_return_sequences": 1, "past_present_share_buffer": False,
                   "repetition_penalty": 1.0, "temperature": 1.0, "top_k": 1, "top_p": 1.0}}


def prepare(name: str, peers: list[str]) -> Path:
    """The corpus model ``name``'s directory with what ``peers`` need made."""
    model_dir = decoders.decoder_dir(name)
    if decoders.RECIPES[name]["exporter"] != "optimum" and {"ortgenai", "ovgenai"} & set(peers):
        raise SystemExit(f"{name}: the genai peers need an optimum export (gpt2, llama, gpt2-bench)")
    with open(model_dir.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        og = model_dir / "ortgenai"
        if "ortgenai" in peers and not (og / "genai_config.json").is_file():
            og.mkdir(exist_ok=True)
            for f in ("model.onnx", "tokenizer.json", "tokenizer_config.json"):
                if not (og / f).exists():
                    (og / f).symlink_to(model_dir / f)
            (og / "genai_config.json").write_text(json.dumps(genai_config(model_dir), indent=1))
        ov = model_dir / "openvino"
        if "ovgenai" in peers and not (ov / "openvino_model.xml").is_file():
            tmp = model_dir / ".openvino-build"
            shutil.rmtree(tmp, ignore_errors=True)
            env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
            done = subprocess.run([str(OVGENAI / "bin" / "optimum-cli"), "export", "openvino", "--model",
                                   str(model_dir / "hf"), "--task", "text-generation-with-past",
                                   "--weight-format", "fp32", str(tmp)], env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"optimum-intel's export failed (run benchmarks/decoder_peers.sh?):\n{done.stderr[-2000:]}")
            os.replace(tmp, ov)
    return model_dir
