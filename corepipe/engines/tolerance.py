"""What "the same result as onnxruntime" means at each precision: the documented tolerances.

fp32 is exact up to kernel rounding, one rule everywhere: every element within
``FP32_ATOL + FP32_RTOL * |reference|`` (numpy's ``allclose`` with rtol = atol = 1e-4). The
README promises it for a pipeline's outputs against one onnxruntime session on the whole model
(the transparency tests check it on real models), the demo's "match" uses it (`close_enough`),
and the compiler holds each OpenVINO stage to it against onnxruntime on the example inputs
before trusting OpenVINO with the stage (`differs`). OpenVINO's fp32 stages of every built-in
architecture stay within 0.22 of that bound (benchmarks/RESULTS.md, "One fp32 tolerance").

bf16 keeps 8 bits of mantissa in matmul and convolution inputs (fp32 accumulation), so values
move by about 0.5 % (BERT-base hidden states, ResNet-50 logits, measured on this machine kind).
The documented bf16 tolerances, checked on real exported models in tests/test_transparency_real.py
(``test_bf16_*``), tests/test_tensorflow.py and tests/test_torch_compile.py:

- float outputs: cosine similarity with the fp32 reference >= ``BF16_MIN_COSINE`` and relative
  L2 error <= ``BF16_MAX_REL_L2``, per request;
- classifier scores: the top-1 class agrees wherever the fp32 margin between the two best
  scores exceeds ``TOP1_MARGIN`` of the score range (closer calls may flip), and on at least
  ``TOP1_MIN_AGREEMENT`` of all requests.

At bf16 and fp16, `differs` is looser on purpose (relative L2 10 %): there it catches an engine
computing a stage *wrongly*, not rounding differently.
"""

from __future__ import annotations

import numpy as np

__all__ = ["BF16_MAX_REL_L2", "BF16_MIN_COSINE", "FP32_ATOL", "FP32_RTOL", "TOP1_MARGIN",
           "TOP1_MIN_AGREEMENT", "close_enough", "cosine", "differs", "fp32_excess", "rel_l2"]

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


def fp32_excess(got: np.ndarray, want: np.ndarray) -> tuple[float, float]:
    """The largest ``|got - want|`` and, over the elements, the largest ratio of ``|got - want|``
    to its fp32 bound ``FP32_ATOL + FP32_RTOL * |want|`` (<= 1: within the tolerance). NaNs and
    infinities must sit in the same places (else the ratio is infinite)."""
    wide = np.complex128 if "c" in (got.dtype.kind, want.dtype.kind) else np.float64
    a, b = got.astype(wide).ravel(), want.astype(wide).ravel()
    inf_a, inf_b = np.isinf(a), np.isinf(b)
    if not (np.array_equal(np.isnan(a), np.isnan(b)) and np.array_equal(inf_a, inf_b)
            and np.array_equal(a[inf_a], b[inf_b])):
        return float("inf"), float("inf")
    ok = np.isfinite(b)
    diff = np.abs(a[ok] - b[ok])
    if diff.size == 0:
        return 0.0, 0.0
    return float(diff.max()), float((diff / (FP32_ATOL + FP32_RTOL * np.abs(b[ok]))).max())


def close_enough(got: np.ndarray, want: np.ndarray, precision: str) -> tuple[bool, str]:
    """Whether ``got`` matches the fp32 reference ``want`` within ``precision``'s documented
    tolerance, and the figures, e.g. ``(True, "cosine 0.99998, relative L2 0.41%")``."""
    if got.shape != want.shape or got.dtype != want.dtype:
        return False, f"{got.dtype}{list(got.shape)} where onnxruntime gives {want.dtype}{list(want.shape)}"
    if got.dtype.kind not in "fc":
        bad = int(np.count_nonzero(got != want))
        return bad == 0, f"{bad} of {got.size} elements differ"
    if precision == "fp32":
        diff, ratio = fp32_excess(got, want)
        return ratio <= 1.0, f"max |difference| {diff:.2g} ({ratio:.2g} of the per-element tolerance)"
    c, r = cosine(got, want), rel_l2(got, want)
    return c >= BF16_MIN_COSINE and r <= BF16_MAX_REL_L2, f"cosine {c:.5f}, relative L2 {r:.2%}"


def differs(got: np.ndarray, want: np.ndarray, precision: str) -> str | None:
    """How ``got`` (an engine's output) disagrees with onnxruntime's ``want``, or None.

    At fp32, the promise itself: every element within ``FP32_ATOL + FP32_RTOL * |want|``
    (`fp32_excess`). At bf16/fp16, where rounding moves values by design, it catches a wrong
    computation: relative L2 error up to 10 %. Integer and bool outputs must match exactly;
    NaNs must sit in the same places.
    """
    if got.shape != want.shape or got.dtype != want.dtype:
        return f"gives {got.dtype}{list(got.shape)} where onnxruntime gives {want.dtype}{list(want.shape)}"
    if got.dtype.kind not in "fc":
        bad = int(np.count_nonzero(got != want))
        return f"differs from onnxruntime in {bad} of {got.size} elements" if bad else None
    a, b = got.astype(np.float64), want.astype(np.float64)
    if not np.array_equal(np.isnan(a), np.isnan(b)) or not np.array_equal(np.isinf(a), np.isinf(b)):
        return "has NaN or infinite values where onnxruntime does not, or the other way round"
    if precision == "fp32":
        diff, ratio = fp32_excess(got, want)
        if ratio > 1.0:
            return (f"differs from onnxruntime by up to {diff:.3g}, {ratio:.3g} x the fp32 tolerance "
                    f"({FP32_ATOL:g} + {FP32_RTOL:g} x |value| per element)")
        return None
    ok = np.isfinite(b)
    a, b = a[ok], b[ok]
    if b.size == 0:
        return None
    rel = rel_l2(a, b)
    if rel > 0.1:
        return f"differs from onnxruntime by {rel:.1%} (relative L2; {precision} tolerance 10%)"
    return None
