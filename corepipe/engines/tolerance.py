"""What "the same result as onnxruntime" means at each precision: the documented tolerances.

fp32 is exact up to kernel rounding: outputs within ``FP32_RTOL``/``FP32_ATOL`` of one
onnxruntime session on the whole model (the transparency tests' tolerance for real models).

bf16 keeps 8 bits of mantissa in matmul and convolution inputs (fp32 accumulation), so values
move by about 0.5 % (BERT-base hidden states, ResNet-50 logits, measured on this machine kind).
The documented bf16 tolerances, checked in tests/test_precision.py on real exported models:

- float outputs: cosine similarity with the fp32 reference >= ``BF16_MIN_COSINE`` and relative
  L2 error <= ``BF16_MAX_REL_L2``, per request;
- classifier scores: the top-1 class agrees wherever the fp32 margin between the two best
  scores exceeds ``TOP1_MARGIN`` of the score range (closer calls may flip), and on at least
  ``TOP1_MIN_AGREEMENT`` of all requests.

`differs` is looser on purpose: the compiler uses it to catch an engine computing a stage
*wrongly* (not rounding differently) before it trusts that engine with the stage.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BF16_MAX_REL_L2", "BF16_MIN_COSINE", "FP32_ATOL", "FP32_RTOL", "TOP1_MARGIN",
           "TOP1_MIN_AGREEMENT", "close_enough", "cosine", "differs", "rel_l2"]

FP32_RTOL = FP32_ATOL = 1e-4
BF16_MIN_COSINE = 0.999
BF16_MAX_REL_L2 = 0.02
TOP1_MARGIN = 0.01
TOP1_MIN_AGREEMENT = 0.9


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened (1.0 for two zero tensors)."""
    x, y = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:
        return 1.0 if nx == ny else 0.0
    return float(x @ y / (nx * ny))


def rel_l2(got: np.ndarray, want: np.ndarray) -> float:
    """``|got - want| / |want|`` in the L2 norm."""
    diff = float(np.linalg.norm(got.astype(np.float64) - want.astype(np.float64)))
    return diff / max(float(np.linalg.norm(want.astype(np.float64))), 1e-30)


def close_enough(got: np.ndarray, want: np.ndarray, precision: str) -> tuple[bool, str]:
    """Whether ``got`` matches the fp32 reference ``want`` within ``precision``'s documented
    tolerance, and the figures, e.g. ``(True, "cosine 0.99998, relative L2 0.41%")``."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, f"{got.dtype}{list(got.shape)} where onnxruntime gives {want.dtype}{list(want.shape)}"
    if got.dtype.kind not in "fc":
        bad = int(np.count_nonzero(got != want))
        return bad == 0, f"{bad} of {got.size} elements differ"
    if precision == "fp32":
        scale = float(np.abs(want).max(initial=0.0))
        diff = float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max(initial=0.0))
        return diff <= FP32_ATOL + FP32_RTOL * scale, f"max |difference| {diff:.2g}"
    c, r = cosine(got, want), rel_l2(got, want)
    return c >= BF16_MIN_COSINE and r <= BF16_MAX_REL_L2, f"cosine {c:.5f}, relative L2 {r:.2%}"


def differs(got: np.ndarray, want: np.ndarray, precision: str) -> str | None:
    """How ``got`` (an engine's output) disagrees with onnxruntime's ``want``, or None.

    Tolerances catch a wrong computation, not rounding: at fp32 the largest difference may be
    1e-3 of the output's scale (max(1, max |want|)); at bf16/fp16 the relative L2 error may
    be 10 %. Integer and bool outputs must match exactly; NaNs must sit in the same places.
    """
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"gives {got.dtype}{list(got.shape)} where onnxruntime gives {want.dtype}{list(want.shape)}"
    if got.dtype.kind not in "fc":
        bad = int(np.count_nonzero(got != want))
        return f"differs from onnxruntime in {bad} of {got.size} elements" if bad else None
    a, b = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(np.isinf(a), np.isinf(b)):
        return "has NaN or infinite values where onnxruntime does not, or the other way round"
    ok = np.isfinite(b)
    a, b = a[ok], b[ok]
    if b.size == 0:
        return None
    if precision == "fp32":
        diff, scale = float(np.abs(a - b).max()), max(1.0, float(np.abs(b).max()))
        if diff > 1e-3 * scale:
            return f"differs from onnxruntime by up to {diff:.3g} (scale {scale:.3g}, tolerance 1e-3 of it)"
        return None
    rel = rel_l2(a, b)
    if rel > 0.1:
        return f"differs from onnxruntime by {rel:.1%} (relative L2; {precision} tolerance 10%)"
    return None
