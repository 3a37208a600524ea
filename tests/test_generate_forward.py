"""`TokenStream.forward`: a sequence's tokens handed to a callback on the pipeline's thread (what
the server's event loop uses instead of a thread per sequence), in order, then `END`; the same
tokens as iterating, and a forwarded stream that is closed still frees its KV row."""

from __future__ import annotations

import threading

from decoders import decoder_model_or_skip, reference_generate
from test_generate import decoder_artifact

import corepipe
from corepipe.runtime.sequences.stream import END


def test_forward_gives_the_tokens_then_end(tmp_path_factory, no_leaks):
    art = decoder_artifact(tmp_path_factory, "gpt2", 2)
    prompt = [4, 8, 15, 16, 23, 42]
    want = reference_generate(decoder_model_or_skip("gpt2"), [prompt], 10)[0]
    with corepipe.load(art, backend="inline") as pipe:
        got: list[object] = []
        done = threading.Event()

        def put(item: object) -> None:
            got.append(item)
            if item is END or isinstance(item, BaseException):
                done.set()

        stream = pipe.generate(prompt, max_new_tokens=10)
        stream.forward(put)
        assert done.wait(60)
        assert got[:-1] == want and got[-1] is END and stream.finish_reason == "length"
        long = pipe.generate(prompt, max_new_tokens=40)
        long.forward(lambda item: None)
        long.close()
        assert long.finish_reason == "cancelled"
        for _ in range(200):
            if pipe.sequences()["rows_in_use"] == 0:
                break
            threading.Event().wait(0.05)
        assert pipe.sequences()["rows_in_use"] == 0
