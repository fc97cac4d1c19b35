"""DeployOptions: checked when made; the stage options deploy derives from them."""

from __future__ import annotations

import pytest

from crnet.calibration.options import Int8Options, SensitivityOptions
from crnet.data.options import EpisodeSource
from crnet.deploy.options import DeployOptions
from crnet.deploy.pipeline import quantize_options
from crnet.runtime.errors import UsageError


@pytest.mark.parametrize(("values", "message"), [
    ({"precisions": ("fp16",)}, "precisions must list fp32"),
    ({"precisions": ("fp32", "int4")}, "precisions must list fp32"),
    ({"episodes": 0}, "episodes must be at least 1"),
    ({"calibration_episodes": 0}, "calibration_episodes must be at least 1"),
    ({"bench_iterations": 0}, "bench_iterations must be at least 1"),
    ({"parity_episodes": -1}, "parity_episodes must be at least 0"),
])
def test_bad_values_are_usage_errors(values: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        DeployOptions(**values)


def test_stage_options_take_the_budget_data_and_progress() -> None:
    options = DeployOptions(
        data=EpisodeSource(seed=5), progress=False,
        int8=Int8Options(calibration_method="minmax",
                         sensitivity=SensitivityOptions(target_delta=0.2)))
    budget = {"check_episodes": 3, "calibration_episodes": 4, "sensitivity_episodes": 5}
    stages = quantize_options(options, 2, budget)
    fp16, int8 = stages["fp16"], stages["int8"]
    assert fp16.check_episodes == 3 and not fp16.progress
    assert int8.calibration_episodes == 4 and int8.sensitivity.episodes == 5
    assert int8.calibration_method == "minmax" and int8.sensitivity.target_delta == 0.2
    # calibrated on the fold's train split with the calibration seed, not the test seed
    assert fp16.data == int8.data == EpisodeSource(fold=2, seed=0)
