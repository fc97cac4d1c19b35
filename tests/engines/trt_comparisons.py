"""The GPU suite's judgements, plain numpy (checked on the CPU by test_trt_comparisons.py).

Two kinds of comparison, each returning the problems it finds (empty: it passes):

* ``output_problems``: one output of a TensorRT engine against ONNX Runtime on the same
  graph and input. The difference is measured at the 99th percentile of ``|actual -
  expected|`` relative to the 99th percentile of ``|expected|`` (no floor: a reference
  whose logits are small makes the comparison stricter, never looser), so that one outlier
  pixel does not fail an int8 engine but a scaled or zeroed output always does. Logit
  outputs (two channels) must also pick the same class per pixel. A reference output that
  is nearly constant cannot tell a right engine from a wrong one: that is a problem too.
* ``miou_problems``: a variant's mIoU against a reference mIoU (ONNX Runtime on the same
  variant, or the PyTorch fp32 model), within the accuracy gate of its precision
  (crnet/gates.json, the one tolerance file).
"""

from __future__ import annotations

import numpy as np

# |TensorRT - ONNX Runtime| at the 99th percentile, relative to |ONNX Runtime| at the 99th
# percentile; fp32 allows TF32
OUTPUT_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "int8": 2.5e-1}
# share of pixels whose two-channel logits pick the same class
ARGMAX_AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "int8": 0.97}
# a reference output whose values span less than this judges nothing
MIN_REFERENCE_SPREAD = 0.5
PERCENTILE = 99.0


def output_problems(name: str, expected: np.ndarray, actual: np.ndarray,
                    precision: str) -> list[str]:
    """What is wrong with ``actual`` (TensorRT) against ``expected`` (ONNX Runtime) for
    output ``name`` at ``precision``; [] when it matches."""
    if actual.shape != expected.shape:
        return [f"{name}: shape {list(actual.shape)}, expected {list(expected.shape)}"]
    actual = actual.astype(np.float32)
    expected = expected.astype(np.float32)
    if not np.isfinite(actual).all():
        return [f"{name}: {int(np.count_nonzero(~np.isfinite(actual)))} non-finite values"]
    spread = float(expected.max() - expected.min())
    if spread < MIN_REFERENCE_SPREAD:
        return [f"{name}: the reference spans only {spread:.3g}: a nearly constant output "
                "cannot tell a right engine from a wrong one (use a bundle whose logits are "
                "spread, e.g. the bundled trained checkpoint)"]
    problems = []
    scale = float(np.percentile(np.abs(expected), PERCENTILE))
    difference = float(np.percentile(np.abs(actual - expected), PERCENTILE))
    tolerance = OUTPUT_TOLERANCE[precision]
    if difference > tolerance * scale:
        problems.append(f"{name}: |TensorRT - ONNX Runtime| p{PERCENTILE:g} {difference:.3g} > "
                        f"{tolerance:g} x |ONNX Runtime| p{PERCENTILE:g} {scale:.3g}")
    if expected.ndim == 4 and expected.shape[1] == 2:  # logits: the mask they give
        agreement = float(np.mean(actual.argmax(1) == expected.argmax(1)))
        if agreement < ARGMAX_AGREEMENT[precision]:
            problems.append(f"{name}: masks agree on {agreement:.2%} of pixels, below "
                            f"{ARGMAX_AGREEMENT[precision]:.1%}")
    return problems


def miou_problems(what: str, candidate: float, reference: float, gate: float) -> list[str]:
    """[] when ``|candidate - reference| <= gate`` (mIoU in percent points)."""
    delta = candidate - reference
    if not np.isfinite(candidate) or abs(delta) > gate:
        return [f"{what}: mIoU {candidate:.2f} vs {reference:.2f} (delta {delta:+.2f}, gate "
                f"+-{gate:g})"]
    return []
