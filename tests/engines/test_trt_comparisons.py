"""The GPU suite's comparison functions (trt_comparisons.py), on the CPU: they pass what
matches and reject zeros and halved logits, on real outputs of the bundled trained
checkpoint (the suite's model: spread logits); a nearly constant reference (a random-weight
model, what the suite used to run on) is refused outright."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from crnet.runtime.bundle import PRECISIONS
from tests.engines.trt_comparisons import miou_problems, output_problems
from tests.engines.trt_suite_bundle import episode_inputs

OUTPUTS = ("feat", "query_logits", "support_logits")


def model_outputs(model: Any) -> dict[str, np.ndarray]:
    """The backbone's and the refine graph's outputs of ``model`` (a CRNet) on one 2-shot
    synthetic-5i episode, preprocessed as the runtime does."""
    from crnet.data.synthetic import Synthetic5i
    from crnet.runtime.backends.base import ModelSpec

    episode = Synthetic5i(0, split="test", seed=0).episode(0, 2)
    inputs = episode_inputs(ModelSpec.from_config(model.config), episode)
    with torch.no_grad():
        feat = model.encode(torch.from_numpy(inputs["images"]))
        query, support = model.refine(feat[:1], feat[1:], torch.from_numpy(inputs["support_mask"]))
    return {"feat": feat.numpy(), "query_logits": query.numpy(),
            "support_logits": support.numpy()}


@pytest.fixture(scope="module")
def spread() -> dict[str, np.ndarray]:
    """Outputs of the bundled trained checkpoint (crnet-lite fold 0)."""
    from crnet.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint()
    outputs = model_outputs(model)
    assert np.ptp(outputs["query_logits"]) > 4.0  # decisive: far from a constant output
    return outputs


@pytest.mark.parametrize("precision", PRECISIONS)
def test_matching_outputs_pass(spread: dict[str, np.ndarray], precision: str) -> None:
    rng = np.random.default_rng(0)
    for name in OUTPUTS:
        expected = spread[name]
        assert output_problems(name, expected, expected.copy(), precision) == []
        noise = rng.normal(0, 1e-4 * float(np.abs(expected).max()), expected.shape)
        assert output_problems(name, expected, expected + noise.astype(np.float32),
                               precision) == []


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("wrong", ["zeros", "halved"])
def test_zeros_and_halved_outputs_are_rejected(spread: dict[str, np.ndarray], precision: str,
                                               wrong: str) -> None:
    for name in OUTPUTS:
        expected = spread[name]
        actual = np.zeros_like(expected) if wrong == "zeros" else expected * 0.5
        problems = output_problems(name, expected, actual, precision)
        assert problems and all(problem.startswith(name) for problem in problems), name
        assert "|TensorRT - ONNX Runtime|" in problems[0]


def test_halved_logits_give_the_same_masks_so_only_outputs_catch_them(
        spread: dict[str, np.ndarray]) -> None:
    """Why outputs are compared at all: halving keeps every argmax, so masks and mIoU
    cannot see it; zeros make every pixel background, which the mIoU gate sees."""
    logits = spread["query_logits"]
    assert np.array_equal((logits * 0.5).argmax(1), logits.argmax(1))
    assert miou_problems("halved", 61.0, 61.0, gate=0.05) == []
    assert miou_problems("zeros", 0.0, 61.0, gate=1.0)
    assert miou_problems("nan", float("nan"), 61.0, gate=1.0)
    assert miou_problems("fp16", 60.8, 61.0, gate=0.3) == []


def test_shape_and_non_finite_outputs_are_rejected(spread: dict[str, np.ndarray]) -> None:
    logits = spread["query_logits"]
    assert "shape" in output_problems("query_logits", logits, logits[:, :1], "fp32")[0]
    broken = logits.copy()
    broken[0, 0, 0, 0] = np.nan
    assert "non-finite" in output_problems("query_logits", logits, broken, "fp32")[0]


def test_a_nearly_constant_reference_is_refused() -> None:
    """A random-weight model (the suite's former default bundle): every logit within a few
    hundredths, so an all-zero engine output would pass any tolerance scaled by it."""
    from crnet.models.crnet import CRNet
    from tests.export.conftest import make_tiny_config

    torch.manual_seed(0)
    outputs = model_outputs(CRNet(make_tiny_config()).eval())
    for name in ("query_logits", "support_logits"):
        problems = output_problems(name, outputs[name], np.zeros_like(outputs[name]), "int8")
        assert problems and "nearly constant" in problems[0], (name, problems)
