"""The plain install (the wheel, no extras) runs crnet.runtime.Segmenter without torch.

Builds crnet-deploy's wheel, installs it into a fresh virtual environment with no extras,
shows that torch is absent there, segments with `Segmenter(bundle, backend="auto")` on a
bundle exported here, and shows that a command needing an extra names it. The venv is
built once per test process and shared with tests/test_packaging.py (which also runs
`crnet <command> --help` for every subcommand there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.venvs import plain_venv as shared_plain_venv
from tests.venvs import run

SEGMENT = """
import importlib.util, json, sys
import numpy as np
from crnet.runtime import Segmenter
bundle, out = sys.argv[1], sys.argv[2]
image = np.zeros((90, 120, 3), np.uint8)
image[20:60, 30:90] = (200, 40, 40)
mask = np.zeros((90, 120), np.uint8)
mask[20:60, 30:90] = 1
seg = Segmenter(bundle, backend="auto")
seg.set_support([image], [mask])
np.save(out, seg.segment(image))
print(json.dumps({"backend": seg.backend_name,
                  "torch_installed": importlib.util.find_spec("torch") is not None,
                  "torch_imported": "torch" in sys.modules,
                  "runtime_file": sys.modules["crnet.runtime"].__file__}))
"""


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path) -> Path:
    """A fresh venv with only the crnet-deploy wheel (no extras) installed; its bin dir."""
    return shared_plain_venv(tmp_path_factory, crnet_wheel)


def test_plain_install_segments_without_torch(plain_venv: Path, runtime_bundle: Path,
                                              tmp_path: Path) -> None:
    listed = run([str(plain_venv / "python"), "-m", "pip", "list", "--format", "json"],
                  cwd=tmp_path)
    packages = {entry["name"].lower() for entry in json.loads(listed.stdout)}
    assert {"crnet-deploy", "numpy", "onnxruntime", "onnx"} <= packages
    assert not packages & {"torch", "safetensors", "scikit-image", "onnxscript"}

    out = tmp_path / "mask.npy"
    result = run([str(plain_venv / "python"), "-c", SEGMENT, str(runtime_bundle), str(out)],
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {**facts, "backend": "onnxruntime", "torch_installed": False,
                     "torch_imported": False}
    assert str(plain_venv.parent) in facts["runtime_file"]  # the wheel's copy, not the repo

    from crnet.runtime import Segmenter

    image = np.zeros((90, 120, 3), np.uint8)
    image[20:60, 30:90] = (200, 40, 40)
    mask = np.zeros((90, 120), np.uint8)
    mask[20:60, 30:90] = 1
    here = Segmenter(runtime_bundle, backend="onnxruntime")
    here.set_support([image], [mask])
    assert np.array_equal(np.load(out), here.segment(image))


def test_a_command_that_needs_an_extra_names_it(plain_venv: Path, tmp_path: Path) -> None:
    result = run([str(plain_venv / "crnet"), "export", "--out", str(tmp_path / "b")],
                  cwd=tmp_path)
    assert result.returncode == 1
    assert "pip install 'crnet-deploy[export]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "b").exists()
