"""Makes one decoder of the corpus (`decoders`): a local byte-level BPE tokenizer, a transformers
model with random weights saved with ``save_pretrained``, and its ONNX export with past.

Run as a script, in the environment the exporter needs (`decoders` picks it)::

    python decoder_export.py RECIPE_JSON OUT_DIR

- ``"exporter": "optimum"``: optimum-onnx's ``main_export(task="text-generation-with-past")``
  (optimum-onnx 0.1.0 needs transformers < 4.58: its own venv, ``$COREPIPE_OPTIMUM_PYTHON``).
  Inputs ``input_ids``, ``attention_mask`` [batch, past + seq], ``position_ids``,
  ``past_key_values.{i}.key/value`` [batch, kv_heads, past, head_dim]; outputs ``logits``,
  ``present.{i}.key/value``.
- ``"exporter": "legacy"``: torch.onnx's legacy (TorchScript) exporter, ``dynamo=False``, of a
  wrapper that takes and gives each layer's key and value stacked: ``past.{i}`` /
  ``present.{i}`` [2, batch, heads, past, head_dim], as GPT-2 exports with past used to look.

OUT_DIR gets ``model.onnx``, ``tokenizer.json``, ``tokenizer_config.json`` and ``hf/`` (the
``save_pretrained`` directory, tokenizer included, from which optimum-intel exports the same
weights to OpenVINO). This file's source is part of the cache key: change it and models rebuild.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"
#: A simple chat template (issue 26's /v1/chat/completions reads it from tokenizer_config.json).
CHAT_TEMPLATE = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
                 "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")


def training_text(words: int, seed: int = 0) -> list[str]:
    """Deterministic pseudo-English (syllable words, punctuation, digits, a few non-ASCII letters):
    enough distinct pairs that the BPE trainer reaches a vocab of 8192."""
    import random

    rng = random.Random(seed)
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "qu", "r", "s", "t", "v",
              "w", "z", "th", "st", "br", "ch", "sh", "pl", "gr", "tr"]
    nuclei = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "oo", "é", "ü"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "ng", "ck", "st", "nd"]
    lines, line = [], []
    for _ in range(words):
        w = "".join(rng.choice(onsets) + rng.choice(nuclei) + rng.choice(codas)
                    for _ in range(rng.randint(1, 3)))
        r = rng.random()
        w = w.capitalize() if r < 0.1 else (str(rng.randint(0, 999)) if r < 0.13 else w)
        line.append(w + (rng.choice([",", ".", "!", "?", ";"]) if rng.random() < 0.08 else ""))
        if len(line) >= 12:
            lines.append(" ".join(line))
            line = []
    return lines


def train_tokenizer(vocab: int, out: Path, max_length: int) -> None:
    """A byte-level BPE of exactly ``vocab`` ids (``EOS`` is id 0), saved as ``tokenizer.json``
    plus a ``tokenizer_config.json`` with a chat template, into ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(40_000 if vocab <= 2048 else 200_000), trainer=trainer)
    if tok.get_vocab_size() != vocab:
        raise RuntimeError(f"the BPE trainer reached {tok.get_vocab_size()} ids, not {vocab}: "
                           "give training_text more words")
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS, "eos_token": EOS,
              "unk_token": EOS, "pad_token": EOS, "model_max_length": max_length,
              "add_prefix_space": False, "clean_up_tokenization_spaces": False,
              "chat_template": CHAT_TEMPLATE}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=1))
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}))


def pretrained(recipe: dict[str, Any]) -> Any:
    """The transformers model of ``recipe``, random weights from a fixed seed, untied head (tied
    random heads make greedy decoding repeat one token)."""
    import torch
    import transformers

    torch.manual_seed(recipe["seed"])
    common = {"vocab_size": recipe["vocab"], "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0,
              "tie_word_embeddings": False}
    if recipe["arch"] == "gpt2":
        config = transformers.GPT2Config(n_layer=recipe["layers"], n_embd=recipe["width"],
                                         n_head=recipe["heads"], n_positions=recipe["positions"], **common)
        model = transformers.GPT2LMHeadModel(config)
    elif recipe["arch"] == "llama":
        config = transformers.LlamaConfig(
            num_hidden_layers=recipe["layers"], hidden_size=recipe["width"],
            intermediate_size=2 * recipe["width"], num_attention_heads=recipe["heads"],
            num_key_value_heads=recipe["kv_heads"], max_position_embeddings=recipe["positions"],
            rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=recipe.get("init", 0.02), **common)
        model = transformers.LlamaForCausalLM(config)
    else:
        raise ValueError(f"unknown arch {recipe['arch']!r}: expected 'gpt2' or 'llama'")
    return model.eval()


def export_optimum(hf_dir: Path, out: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(hf_dir), output=out / "onnx", task="text-generation-with-past", do_validation=False)
    for f in (out / "onnx").iterdir():
        if f.name.startswith("model.onnx"):
            f.rename(out / f.name)
    shutil.rmtree(out / "onnx")  # the rest: copies of hf/'s config and tokenizer


def export_legacy(model: Any, recipe: dict[str, Any], out: Path) -> None:
    """torch.onnx's legacy exporter on a wrapper with stacked ``past.{i}`` / ``present.{i}``.

    transformers 5 takes no tuples of past key/values any more: the wrapper fills a
    ``DynamicCache`` from the stacked inputs and stacks the cache's layers back. Traced with a
    past of 3 and 4 new tokens, so neither length is baked in as 0 or 1."""
    import torch
    from transformers import DynamicCache

    n = recipe["layers"]

    class Stacked(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any) -> Any:
            cache = DynamicCache()
            for i, kv in enumerate(past):
                cache.update(kv[0], kv[1], i)
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             past_key_values=cache, use_cache=True, return_dict=True)
            layers = out.past_key_values.layers
            return (out.logits, *[torch.stack([layer.keys, layer.values]) for layer in layers])

    heads, d = recipe["heads"], recipe["width"] // recipe["heads"]
    b, p, s = 2, 3, 4
    ids = torch.randint(0, recipe["vocab"], (b, s))
    mask = torch.ones(b, p + s, dtype=torch.int64)
    pos = torch.arange(p, p + s).repeat(b, 1)
    past = [torch.randn(2, b, heads, p, d) for _ in range(n)]
    names_in = ["input_ids", "attention_mask", "position_ids", *[f"past.{i}" for i in range(n)]]
    names_out = ["logits", *[f"present.{i}" for i in range(n)]]
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch_size", 1: "sequence_length"},
        "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
        "position_ids": {0: "batch_size", 1: "sequence_length"},
        "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(n):
        axes[f"past.{i}"] = {1: "batch_size", 3: "past_sequence_length"}
        axes[f"present.{i}"] = {1: "batch_size", 3: "total_sequence_length"}
    with torch.no_grad():
        torch.onnx.export(Stacked().eval(), (ids, mask, pos, *past), str(out / "model.onnx"), dynamo=False,
                          opset_version=17, input_names=names_in, output_names=names_out, dynamic_axes=axes)


def main(recipe_json: str, out_dir: str) -> None:
    recipe = json.loads(recipe_json)
    out = Path(out_dir)
    hf_dir = out / "hf"
    train_tokenizer(recipe["vocab"], out, recipe["positions"])
    model = pretrained(recipe)
    if recipe["exporter"] == "legacy":
        model.config._attn_implementation = "eager"  # plain matmuls: what the legacy tracer reads
    model.save_pretrained(str(hf_dir))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(out / name, hf_dir / name)
    if recipe["exporter"] == "optimum":
        export_optimum(hf_dir, out)
    elif recipe["exporter"] == "legacy":
        export_legacy(model, recipe, out)
    else:
        raise ValueError(f"unknown exporter {recipe['exporter']!r}: expected 'optimum' or 'legacy'")
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
