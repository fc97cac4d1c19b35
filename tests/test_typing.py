"""The installed package's type hints (crnet/py.typed) under ``mypy --strict``.

mypy reads crnet-deploy as an application does: from the plain install's site-packages
(tests/venvs.py), where the wheel's py.typed marks it typed. The examples and a small
application pass; an application that mistakes what ``segment`` returns fails.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.venvs import ROOT, plain_venv, run

pytest.importorskip("mypy", reason="the typing checks need mypy (pip install -e '.[test]')")

GOOD_APP = """
from __future__ import annotations

import numpy as np
import numpy.typing as npt

import crnet
from crnet.runtime import (BackendError, BundleError, CrnetError, InputError,
                           MissingExtraError, RemoteError, RemoteSegmenter, Segmenter,
                           UnknownSupportError)


def segment_once(bundle: str, image: npt.NDArray[np.uint8],
                 mask: npt.NDArray[np.bool_]) -> float:
    with Segmenter(bundle, backend="auto", precision="fp32", threads=1) as seg:
        seg.set_support([image], [mask])
        result: npt.NDArray[np.bool_] = seg.segment(image)
        labels, probability = seg.segment(image, return_prob=True)
        pairs: list[tuple[np.ndarray, np.ndarray]] = list(
            seg.segment_stream([image], return_prob=True))
        masks: list[np.ndarray] = list(seg.segment_stream([image]))
        total = float(result.mean() + labels.mean() + probability.mean())
        return total + len(pairs) + len(masks)


def remote(url: str, image: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_]) -> bool:
    try:
        with RemoteSegmenter(url, retry_timeout_s=1.0) as seg:
            seg.set_support([image], [mask])
            found, probability = seg.segment(image, return_prob=True)
            return bool(seg.segment(image).any() and found.all() and probability.max() > 0)
    except (UnknownSupportError, InputError) as error:
        print(error)
    except (RemoteError, BackendError, BundleError, MissingExtraError) as error:
        print(error)
    except CrnetError as error:
        print(error)
    return False


version: str = crnet.__version__
shortcut: type[Segmenter] = crnet.Segmenter
"""

WRONG_APP = """
from __future__ import annotations

import numpy as np

from crnet.runtime import Segmenter

seg = Segmenter("bundle")
image = np.zeros((8, 8, 3), np.uint8)
seg.set_support(image, image)  # one array, not a list of them
result = seg.segment(image, return_prob=True)
result.astype(np.uint8)  # a (mask, probability) tuple treated as the mask
"""


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path) -> Path:
    return plain_venv(tmp_path_factory, crnet_wheel) / "python"


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def mypy_strict(venv_python: Path, cache: Path, *targets: Path) -> tuple[int, str]:
    """Run ``mypy --strict`` on ``targets`` against the packages installed in the venv."""
    result = run([sys.executable, "-m", "mypy", "--strict", "--python-executable",
                  str(venv_python), "--cache-dir", str(cache), "--no-color-output",
                  *map(str, targets)], cwd=ROOT, timeout=600)
    return result.returncode, result.stdout + result.stderr


def test_examples_pass_mypy_strict(venv_python: Path, mypy_cache: Path) -> None:
    examples = sorted((ROOT / "examples").glob("*.py"))
    assert examples
    code, output = mypy_strict(venv_python, mypy_cache, *examples)
    assert code == 0, output
    assert f"no issues found in {len(examples)} source files" in output


def test_an_app_passes_mypy_strict(venv_python: Path, mypy_cache: Path,
                                   tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(GOOD_APP)
    code, output = mypy_strict(venv_python, mypy_cache, app)
    assert code == 0, output


def test_mypy_strict_catches_a_misused_result(venv_python: Path, mypy_cache: Path,
                                              tmp_path: Path) -> None:
    app = tmp_path / "wrong.py"
    app.write_text(WRONG_APP)
    code, output = mypy_strict(venv_python, mypy_cache, app)
    assert code == 1, output
    assert 'Argument 1 to "set_support" of "Segmenter" has incompatible type' in output
    assert 'has no attribute "astype"' in output
    assert "Found 3 errors" in output, output
