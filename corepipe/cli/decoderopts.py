"""The decoder options of `corepipe compile` (``--state``, ``--max-sequences``, ``--max-length``),
read into `corepipe.compile`'s keyword arguments, and what `inspect` says about a decoder plan:
its state pairs by stage, each stage's KV store and the bounds it was sized for."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ..artifact.plan import Plan
from ..artifact.sizes import format_bytes

__all__ = ["State", "MaxSequences", "MaxLength", "decoder_kwargs", "decoder_lines"]

State = Annotated[list[str] | None, typer.Option(
    "--state", metavar="auto|none|PRESENT=PAST",
    help="A decoder's state pairs (its KV cache), kept in the stage that holds their layer: auto (default: "
    "past_key_values.{i}.key/value -> present.{i}.key/value and past.{i} -> present.{i}, by name), none "
    "(the client carries the state), or PRESENT=PAST pairs (repeatable), e.g. present.0.key=past.0.key.",
    show_default=False)]
MaxSequences = Annotated[int | None, typer.Option(
    "--max-sequences", min=1, metavar="N",
    help="A decoder's sequences in flight at once: the rows of each stage's KV store (default 16).",
    show_default=False)]
MaxLength = Annotated[int | None, typer.Option(
    "--max-length", min=1, metavar="TOKENS",
    help="A decoder's tokens per sequence, prompt and generated (default: the model's position table, at "
    "most 1024). Each stage's memory includes its KV store at --max-sequences x --max-length.",
    show_default=False)]


def decoder_kwargs(state: list[str] | None, max_sequences: int | None, max_length: int | None) -> dict[str, Any]:
    """`corepipe.compile`'s ``state``, ``max_sequences`` and ``max_length``.

    Raises:
        typer.BadParameter: a ``--state`` that does not parse, naming the form it takes.
    """
    out: dict[str, Any] = {}
    if max_sequences is not None:
        out["max_sequences"] = max_sequences
    if max_length is not None:
        out["max_length"] = max_length
    if not state:
        return out
    words = [s.strip() for s in state]
    if words in (["auto"], ["none"]):
        out["state"] = None if words == ["none"] else "auto"
        return out
    pairs = {}
    for text in words:
        present, sep, past = text.partition("=")
        if not sep or not present.strip() or not past.strip():
            raise typer.BadParameter(f"cannot read --state {text!r}: write auto, none, or PRESENT=PAST "
                                     "(e.g. present.0.key=past_key_values.0.key), repeatable")
        pairs[present.strip()] = past.strip()
    out["state"] = pairs
    return out


def decoder_lines(plan: Plan) -> list[str]:
    """What a decoder plan says: bounds, KV in all, and each stage's pairs and KV store."""
    dec = plan.decoder
    if dec is None:
        return []
    total = sum(dec.kv_bytes(s.index) for s in plan.stages)
    step = ", ".join(n for n in (dec.input_ids, dec.attention_mask, dec.position_ids) if n)
    lines = [f"decoder: {len(dec.pairs)} state pairs; KV {format_bytes(total)} in all for max_sequences "
             f"{dec.max_sequences} x max_length {dec.max_length} ({format_bytes(sum(p.token_bytes for p in dec.pairs))} "
             f"per token); step inputs {step}; logits {dec.logits!r}"]
    for st in plan.stages:
        mine = dec.pairs_of(st.index)
        names = ", ".join(p.past for p in mine[:4]) + (f", ... ({len(mine)})" if len(mine) > 4 else "")
        lines.append(f"  stage {st.index}: {len(mine)} pairs" + (f" ({names})" if mine else "")
                     + f", KV {format_bytes(dec.kv_bytes(st.index))} of its {format_bytes(st.resident_bytes)}")
    return lines
