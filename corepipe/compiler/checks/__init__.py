"""The data checks: where request data reaches an operand the fast engine does not check.

``intervals`` (the range a tensor's values can take) -> ``unchecked`` (the operands, the intake
checks that cover them, and the stages left on onnxruntime). Reads the model (`..model`) only.
"""
