"""The cut: where the model is cut into stages, and which engine runs each stage.

``solver`` (pure numbers) <- ``cost`` (per-node seconds and bytes) <- ``partition`` (the solver's
problem, stage graphs and plans, each stage's input ranges) <- ``fit`` (cores and memory) and
``estimate`` (the cut from estimates alone); ``choose`` (engine and precision) <- ``measure``
(stages timed on one core), ``loadbalance`` (balance under load), ``probecut`` and ``assemble``
(the stages written). Reads the model (`..model`) and the data checks (`..checks`).
"""
