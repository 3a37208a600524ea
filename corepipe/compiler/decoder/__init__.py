"""The decoder pieces: an autoregressive model compiled into stages that keep their KV.

``statepairs`` (past/present pairs) <- ``stepvalues`` (what each stage recomputes per step) <-
``decoding`` (a decoder detected and analysed) <- ``decodeengines`` (each stage's engine, by a
timed decode step) <- ``decodeplan`` (`compile_decoder`). Above the cut (`..cut`), which it
uses to cut and write the stages; beside the shape machinery, which it does not need.
"""
