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
    """A tiny bundle with decisive masks and an int8 variant (bundles.export_int8_bundle)."""
    from tests.runtime.bundles import export_int8_bundle

    return export_int8_bundle(tmp_path_factory.mktemp("int8"))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
