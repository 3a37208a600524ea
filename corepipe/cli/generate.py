"""``corepipe generate``: stream a decoder artifact's tokens for one prompt (`Pipeline.generate`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ..artifact.tokenizer import open_tokenizer
from ..errors import CorepipeError
from ._app import app, cli_errors, err, start_pipeline

__all__ = ["generate_cmd"]


def _ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise typer.BadParameter(f"--prompt-ids takes comma-separated token ids such as 1,2,3; got {text!r}") from None
    if not ids:
        raise typer.BadParameter("--prompt-ids needs at least one token id")
    return ids


@app.command("generate")
def generate_cmd(
    artifact: Annotated[Path, typer.Argument(
        help="Decoder artifact written by `corepipe compile` (a model with past_key_values).",
        show_default=False)],
    prompt_ids: Annotated[str | None, typer.Option(
        "--prompt-ids", metavar="IDS", help="The prompt as comma-separated token ids: 1,2,3.",
        show_default=False)] = None,
    prompt: Annotated[str | None, typer.Option(
        "--prompt", metavar="TEXT", help="The prompt as text, encoded by the artifact's tokenizer "
        "(or --tokenizer's); the tokens print as text.", show_default=False)] = None,
    tokenizer: Annotated[Path | None, typer.Option(
        "--tokenizer", metavar="PATH", help="A tokenizer.json, or a directory holding one (default: the "
        "one the artifact carries, copied from beside the model at compile time).", show_default=False)] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, metavar="N",
                                                help="Tokens to generate at most.")] = 32,
    temperature: Annotated[float, typer.Option("--temperature", min=0.0, metavar="T",
                                               help="0: greedy; above 0: sample.")] = 0.0,
    top_k: Annotated[int, typer.Option("--top-k", min=0, metavar="K", help="Sample among the K likeliest (0: all).")] = 0,
    top_p: Annotated[float, typer.Option("--top-p", metavar="P", help="Sample within probability P (1: all).")] = 1.0,
    seed: Annotated[int | None, typer.Option("--seed", metavar="N", help="Seed of the draws (default: random).",
                                             show_default=False)] = None,
    eos: Annotated[list[int] | None, typer.Option("--eos-token-id", metavar="ID",
                                                  help="A token id that ends generation (repeatable).",
                                                  show_default=False)] = None,
    backend: Annotated[str, typer.Option("--backend", "-b", metavar="local|inline|ray",
                                         help="local: one pinned process per stage; inline: this process; "
                                         "ray: one actor per stage, on a Ray cluster started here.")] = "local",
    threads_per_stage: Annotated[int | None, typer.Option(
        "--threads-per-stage", "-T", min=1, metavar="T", help="Cores per stage (default: an even share).",
        show_default=False)] = None,
) -> None:
    """Generate tokens after a prompt, printing each as it comes; then the timings on stderr.

    Each stage keeps its layers' KV cache; only the hidden state crosses between stages, and only
    token ids come back. Examples:

    ```
    corepipe generate gpt2_compiled/ --prompt-ids 1,2,3 --max-new-tokens 32
    corepipe generate gpt2_compiled/ --prompt "Once" --temperature 0.8 --seed 1
    ```
    """
    with cli_errors():
        if (prompt_ids is None) == (prompt is None):
            raise typer.BadParameter("give the prompt as --prompt-ids 1,2,3 or as --prompt TEXT (one of them)")
        tok: Any = None
        if prompt is not None:
            tok = open_tokenizer(tokenizer or artifact)
            ids = tok.encode(prompt).ids
            if not ids:
                raise typer.BadParameter(f"--prompt {prompt!r} encodes to no tokens")
        else:
            ids = _ids(prompt_ids or "")
        pipe = start_pipeline(artifact, backend, threads_per_stage=threads_per_stage)
        try:
            if pipe.plan.decoder is None:
                raise CorepipeError(f"{str(artifact)!r} is not a decoder artifact (no state pairs): use `corepipe run`")
            start = time.perf_counter()
            stream = pipe.generate(ids, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,  # type: ignore[attr-defined]
                                   top_p=top_p, seed=seed, eos_token_id=eos or None)
            got: list[int] = []
            first = 0.0
            shown = ""
            for t in stream:
                first = first or time.perf_counter() - start
                got.append(t)
                if tok is None:
                    sys.stdout.write(("," if len(got) > 1 else "") + str(t))
                else:
                    text = tok.decode(got)
                    sys.stdout.write(text[len(shown):])
                    shown = text
                sys.stdout.flush()
            total = time.perf_counter() - start
            sys.stdout.write("\n")
            rate = (len(got) - 1) / (total - first) if len(got) > 1 and total > first else 0.0
            err.print(f"{len(got)} tokens ({stream.finish_reason}) in {total:.3f} s: first token after "
                      f"{first * 1e3:.1f} ms, then {rate:.1f} tokens/s ({pipe.plan.num_cores} stages, {pipe.backend})")
        finally:
            pipe.close()
