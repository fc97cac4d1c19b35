"""The optional dependencies for TensorRT: cuda-python pinned per CUDA major."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli", reason="reading pyproject.toml on 3.10 needs tomli")

ROOT = Path(__file__).resolve().parents[1]
# cuda-python releases that raise RuntimeError instead of returning an error without a driver
RAISING_CUDA_PYTHON = ("12.2.0", "12.6.0")


def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {name: [Requirement(text) for text in requirements]
            for name, requirements in project["optional-dependencies"].items()}


def _cuda_python(extra: str) -> Requirement:
    found = [r for r in _extras()[extra] if r.name == "cuda-python"]
    assert len(found) == 1, f"extra {extra} must pin cuda-python once"
    return found[0]


@pytest.mark.parametrize("extra", ["tensorrt", "tensorrt-cu12", "jetson"])
def test_cuda_12_extras_stay_on_cuda_12(extra: str) -> None:
    """A CUDA 12 driver (JetPack 6) cannot run cuda-python 13."""
    specifier = _cuda_python(extra).specifier
    assert specifier.contains("12.9.4") and specifier.contains("12.6.2.post1")
    assert not specifier.contains("13.0.0")
    assert not any(specifier.contains(v) for v in RAISING_CUDA_PYTHON)


def test_cuda_13_extra_stays_on_cuda_13() -> None:
    specifier = _cuda_python("tensorrt-cu13").specifier
    assert specifier.contains("13.0.0") and specifier.contains("13.4.4")
    assert not specifier.contains("12.9.4") and not specifier.contains("14.0.0")
    tensorrt = [r for r in _extras()["tensorrt-cu13"] if r.name.startswith("tensorrt")]
    assert [r.name for r in tensorrt] == ["tensorrt-cu13"]


def test_tensorrt_extras_name_their_cuda_major() -> None:
    for extra in ("tensorrt", "tensorrt-cu12"):
        names = [r.name for r in _extras()[extra] if r.name.startswith("tensorrt")]
        assert names == ["tensorrt-cu12"], extra
