"""A decoder model behind the server: its tokenizer and chat template, bounded admission, and its
sequences' tokens brought onto the event loop as they are produced.

`Decoder` wraps a `ServedModel` whose pipeline is a decoder (`pipe.generate`). The front ends
(`corepipe.serve.llm_http`: OpenAI's API and KServe v2's generate extension) turn a request into
prompt ids (`encode`, `chat`) and `Params`, then `open` one `Generation` per choice and iterate it
(``async for token, text in gen``). A generation that is closed (its client went away, or a stop
string came) cancels its sequence, which frees its KV row in every stage.

Admission: the pipeline holds ``max_sequences`` sequences at once (its KV rows); the others wait,
in order, up to ``max_waiting`` (the model's ``max_queue``); past that a request is refused at
once with 429 and Retry-After, never dropped silently.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from ..artifact.tokenizer import TOKENIZER_FILES, open_tokenizer, tokenizer_path
from ..errors import InputError, PipelineClosedError
from ..runtime.sequences.stream import END
from .model import Rejected, ServedModel

__all__ = ["Decoder", "Generation", "Params", "is_decoder"]

def is_decoder(model: ServedModel) -> bool:
    """Whether ``model``'s pipeline generates (its plan holds a decoder record)."""
    return model.pipe is not None and getattr(model.pipe.plan, "decoder", None) is not None


@dataclass(frozen=True)
class Params:
    """How one request generates (OpenAI's names): at most ``max_tokens`` new tokens; greedy at
    ``temperature`` 0; ``stop`` strings end a choice (not included in its text)."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    ignore_eos: bool = False  # vLLM's extension: generate max_tokens whatever comes (load generators set it)


class Decoder:
    """A served decoder (see the module docstring). ``observer`` (the metrics) is told of each
    prompt, token and end: ``prompt(model, n)``, ``token(model, first, seconds)``, ``end(model, why)``."""

    def __init__(self, model: ServedModel) -> None:
        assert model.pipe is not None and model.pipe.plan.decoder is not None
        self.model = model
        self.name = model.name
        self.pipe: Any = model.pipe
        self.spec = model.pipe.plan.decoder
        self.max_waiting = model.max_queue
        self.observer: Any = None
        self.created = int(time.time())
        self.tokenizer: Any = None
        self.config: dict[str, Any] = {}
        if tokenizer_path(model.path) is not None:
            self.tokenizer = open_tokenizer(model.path)
            cfg = model.path / TOKENIZER_FILES[1]
            self.config = json.loads(cfg.read_text()) if cfg.is_file() else {}
        eos = self._token_text(self.config.get("eos_token"))
        eos_id = self.tokenizer.token_to_id(eos) if self.tokenizer is not None and eos else None
        self.eos: int | None = None if eos_id is None else int(eos_id)

    @staticmethod
    def _token_text(tok: Any) -> str | None:
        return tok.get("content") if isinstance(tok, dict) else tok if isinstance(tok, str) else None

    # -- prompts -------------------------------------------------------------------------------
    def encode(self, prompt: Any, field: str = "prompt") -> list[int]:
        """A prompt given as text (needs the artifact's tokenizer) or as token ids."""
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise InputError(f"model {self.name!r} has no tokenizer (its artifact carries no tokenizer.json): "
                                 f"send {field} as token ids, e.g. [1, 2, 3], or compile from a model directory "
                                 "holding tokenizer.json")
            ids = [int(t) for t in self.tokenizer.encode(prompt).ids]
            if not ids:
                raise InputError(f"{field} {prompt[:80]!r} encodes to no tokens: send some text")
            return ids
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            return list(prompt)
        raise InputError(f"{field} must be a string or a non-empty list of int token ids; got "
                         f"{json.dumps(prompt)[:120]}")

    def chat(self, messages: Any) -> list[int]:
        """The prompt ids of a chat: ``messages`` rendered by the tokenizer's chat template."""
        template = self.config.get("chat_template")
        if isinstance(template, list):  # named templates: the default one
            template = next((t.get("template") for t in template if t.get("name") == "default"), None)
        if self.tokenizer is None or not isinstance(template, str):
            where = "carries no tokenizer" if self.tokenizer is None else "has no chat_template in tokenizer_config.json"
            raise InputError(f"model {self.name!r} cannot chat: its artifact {where}; use /v1/completions with a "
                             "prompt, or compile from a model directory whose tokenizer_config.json has a chat_template")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            raise InputError('messages must be a non-empty list of {"role": "user", "content": "text"} objects; got '
                             f"{json.dumps(messages)[:120]}")
        try:
            from jinja2.sandbox import ImmutableSandboxedEnvironment
        except ImportError:
            raise InputError("rendering a chat template needs jinja2 on the server: pip install 'corepipe[serve]'") from None
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        text = env.from_string(template).render(
            messages=messages, add_generation_prompt=True,
            bos_token=self._token_text(self.config.get("bos_token")) or "",
            eos_token=self._token_text(self.config.get("eos_token")) or "")
        ids = [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False).ids]
        if not ids:
            raise InputError("the chat renders to no tokens: send some content")
        return ids

    def text(self, ids: list[int]) -> str:
        """Token ids as text: decoded by the tokenizer, or the ids joined by spaces without one."""
        if self.tokenizer is None:
            return " ".join(str(t) for t in ids)
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    # -- sequences -----------------------------------------------------------------------------
    def admit(self, count: int) -> None:
        """Refuse ``count`` new sequences (429) when the wait for a KV row is full, or 503 when
        the model does not serve."""
        ready, why, retry = self.model.readiness()
        if not ready:
            raise Rejected(503, f"model {self.name!r} is not ready: {why}", code="UNAVAILABLE",
                           retry_after=max(1.0, retry))
        waiting = self.pipe.sequences()["waiting"]
        if waiting + count > self.max_waiting + max(0, self.spec.max_sequences - self.pipe.sequences()["live"]):
            raise Rejected(429, f"model {self.name!r} is full: {self.spec.max_sequences} sequences generate and "
                           f"{waiting} wait for a KV row (at most {self.max_waiting} may wait); retry later",
                           code="RESOURCE_EXHAUSTED", retry_after=1.0)

    def open(self, prompt: list[int], params: Params, index: int, seed: int | None) -> Generation:
        """Start one choice: the sequence waits for a KV row, then generates."""
        try:
            stream = self.pipe.generate(
                prompt, max_new_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p,
                top_k=params.top_k, seed=seed, eos_token_id=None if params.ignore_eos else self.eos)
        except PipelineClosedError as exc:
            raise Rejected(503, f"model {self.name!r} is not serving: {exc}", code="UNAVAILABLE",
                           retry_after=1.0) from None
        if self.observer is not None:
            self.observer.prompt(self, len(prompt))
        return Generation(self, stream, index, params.stop)


class IncrementalText:
    """The text of a growing list of token ids, decoding a short window per token instead of
    every id so far (which grows with the square of the output's length).

    The window starts at the tokens before the last text given out, so a tokenizer that drops a
    leading space at a decode's start, or merges bytes across tokens, sees the same context on
    both sides of the difference; text that ends in an incomplete UTF-8 character (U+FFFD) waits
    for the rest. ``text`` equals ``decode(ids)`` up to such a character still incomplete."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self.text = ""
        self._prefix = 0  # the window: ids[_prefix:]; ids[_prefix:_read] decode to _before
        self._read = 0
        self._before = ""

    def add(self, token: int) -> str:
        """Append ``token``; the text it completes (empty while a character is incomplete)."""
        self.ids.append(int(token))
        after = self._decode(self.ids[self._prefix:])
        if len(after) <= len(self._before) or after.endswith("\ufffd"):
            return ""
        piece = after[len(self._before):]
        self._prefix, self._read = self._read, len(self.ids)
        self._before = self._decode(self.ids[self._prefix:self._read])
        self.text += piece
        return piece


class Generation:
    """One choice's tokens on the event loop: ``async for token, text in gen`` gives each token id
    with the text it adds (held back while it could begin a stop string; the text held back
    comes last, with token None). ``finish_reason`` after:
    ``"stop"`` (eos or a stop string), ``"length"``; `close` cancels the sequence."""

    def __init__(self, decoder: Decoder, stream: Any, index: int, stop: tuple[str, ...]) -> None:
        self.decoder = decoder
        self.stream = stream
        self.index = index
        self.stop = stop
        self.tokens: list[int] = []
        self.finish_reason: str | None = None
        self._shown = ""  # text given out so far
        self._text = IncrementalText(decoder.text)  # the tokens' text, a few decoded per token
        self._ended = False
        self._start = time.monotonic()
        self._last = 0.0
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        stream.forward(self._put)  # each token straight from the pipeline's thread onto the loop

    def _put(self, item: object) -> None:
        """(On the pipeline's collector thread) one item of the sequence onto the event loop."""
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is gone: nobody listens
            pass

    async def __aiter__(self) -> AsyncIterator[tuple[int | None, str]]:
        try:
            while True:
                item = await self._queue.get()
                if item is END:
                    break
                if isinstance(item, BaseException):
                    self.finish_reason = "error"
                    raise item
                token = int(item)  # type: ignore[call-overload]
                self._observe()
                self.tokens.append(token)
                piece, stopped = self._advance()
                if stopped:
                    self.finish_reason = "stop"
                    self.close()
                    yield token, piece
                    return
                yield token, piece
            why = self.stream.finish_reason
            self.finish_reason = "stop" if why in ("eos", "stop") else why
            tail = self.text[len(self._shown):]
            if tail:
                self._shown += tail
                yield None, tail  # the held-back text, once no stop string can follow
        finally:
            self.close()

    def _observe(self) -> None:
        now = time.monotonic()
        if self.decoder.observer is not None:
            first = not self.tokens
            self.decoder.observer.token(self.decoder, first, now - (self._start if first else self._last))
        self._last = now

    @property
    def text(self) -> str:
        """The choice's text so far, cut before a stop string that came."""
        return self._cut(self.decoder.text(self.tokens))

    def _cut(self, full: str) -> str:
        if not self.stop:
            return full
        cut = min((i for i in (full.find(s) for s in self.stop) if i >= 0), default=-1)
        return full if cut < 0 else full[:cut]

    def _advance(self) -> tuple[str, bool]:
        """The new text to give out now, and whether a stop string ended the choice (the last
        token's text decoded in a short window: `IncrementalText`)."""
        self._text.add(self.tokens[-1])
        full = self._text.text
        text = self._cut(full)
        if len(text) < len(full):  # a stop string came
            piece = text[len(self._shown):]
            self._shown = text
            return piece, True
        hold = max((len(s) - 1 for s in self.stop), default=0)
        safe = len(text) - hold
        while safe > 0 and text[safe - 1] == "\ufffd":  # an incomplete UTF-8 character: wait for the rest
            safe -= 1
        piece = text[len(self._shown):max(safe, len(self._shown))]
        self._shown += piece
        return piece, False

    def close(self) -> None:
        """Cancel the sequence if it still generates (its KV row is freed in every stage)."""
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        if not self._ended:
            self._ended = True
            self.stream.close()
            if self.decoder.observer is not None:
                self.decoder.observer.end(self.decoder, self.finish_reason)
