"""The quantization options: defaults, and bad values refused when the options are made."""

from __future__ import annotations

import pytest

from crnet.calibration.options import (
    FP16_KEEP_FP32_OPS,
    INT8_OP_TYPES,
    Fp16Options,
    Int8Options,
    SensitivityOptions,
)
from crnet.data.options import EpisodeSource
from crnet.runtime.errors import UsageError


def test_defaults() -> None:
    fp16, int8 = Fp16Options(), Int8Options()
    assert fp16.keep_fp32_ops == FP16_KEEP_FP32_OPS and fp16.check_episodes == 32
    assert int8.op_types == INT8_OP_TYPES and int8.calibration_method is None
    assert int8.sensitivity == SensitivityOptions() and int8.sensitivity.enabled
    assert int8.data == fp16.data == EpisodeSource()


def test_sequences_become_tuples() -> None:
    options = Int8Options(exclude_layers=["refine:w"], op_types=["Conv"])
    assert options.exclude_layers == ("refine:w",) and options.op_types == ("Conv",)
    assert hash(options)  # frozen and hashable: a value, safe to share between stages


@pytest.mark.parametrize(("make", "message"), [
    (lambda: Fp16Options(check_episodes=-1), "check_episodes must be at least 0"),
    (lambda: Int8Options(calibration_episodes=0), "calibration_episodes must be at least 1"),
    (lambda: Int8Options(calibration_shots=0), "calibration_shots must be at least 1"),
    (lambda: Int8Options(calibration_method="kl"), "calibration method must be one of"),
    (lambda: SensitivityOptions(episodes=0), "sensitivity episodes must be at least 1"),
    (lambda: SensitivityOptions(target_delta=-0.1), "target_delta must be at least 0"),
    (lambda: SensitivityOptions(rank="random"), "sensitivity rank must be one of"),
    (lambda: SensitivityOptions(max_fp32_layers=-1), "max_fp32_layers must be at least 0"),
])
def test_bad_values_are_usage_errors(make, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make()
