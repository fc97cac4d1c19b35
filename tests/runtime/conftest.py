"""Fixtures for the runtime tests: a tiny bundle exported once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.runtime.bundles import export_tiny_bundle


@pytest.fixture(scope="session")
def runtime_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight bundle (export.to_onnx.export_bundle), shared by the session."""
    return export_tiny_bundle(tmp_path_factory.mktemp("runtime") / "bundle")


@pytest.fixture(scope="session")
def episode():  # noqa: ANN201 - data.episodes.Episode
    """One 2-shot synthetic-5i test episode."""
    from crnet.data.synthetic import Synthetic5i

    return Synthetic5i(0, split="test", seed=0).episode(3, shots=2)


@pytest.fixture(scope="session")
def ort_segmenter(runtime_bundle: Path, episode):  # noqa: ANN001, ANN201
    """An onnxruntime Segmenter with the episode's supports set."""
    from crnet.runtime import Segmenter

    segmenter = Segmenter(runtime_bundle, backend="onnxruntime", threads=1)
    segmenter.set_support(list(episode.support_images), list(episode.support_masks))
    yield segmenter
    segmenter.close()


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with decisive masks (tests/calibration's balanced model: the runtime
    bundle's x200 classifier turns any int8 rounding into mask flips) and an int8 variant
    (min-max on a few episodes)."""
    from crnet.calibration.int8 import quantize_int8
    from crnet.calibration.options import Int8Options, SensitivityOptions
    from crnet.export.to_onnx import export_bundle
    from crnet.models.checkpoint import save_checkpoint
    from tests.calibration.conftest import balanced_tiny_model

    root = tmp_path_factory.mktemp("int8")
    checkpoint = save_checkpoint(balanced_tiny_model(), root / "tiny", training={"fold": 0})
    bundle = root / "bundle"
    export_bundle(bundle, checkpoint, parity_episodes=2, progress=False)
    quantize_int8(bundle, Int8Options(calibration_method="minmax", calibration_episodes=4,
                                      sensitivity=SensitivityOptions(enabled=False),
                                      progress=False))
    return bundle


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
