"""What an application imports: ``crnet`` and ``crnet.runtime`` are light (no engine is
loaded until a Segmenter is made), the public names, and ``crnet.__version__``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

HEAVY = ("torch", "tensorrt", "onnxruntime", "openvino", "tritonclient")
HEAVY_LOADED = (f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n")

# public name of crnet.runtime -> the module that defines it
PUBLIC = {
    "Segmenter": "crnet.runtime.segmenter",
    "RemoteSegmenter": "crnet.runtime.remote",
    "CrnetError": "crnet.runtime.errors",
    "InputError": "crnet.runtime.preprocess",
    "BundleError": "crnet.runtime.bundle",
    "BackendError": "crnet.runtime.backends.base",
    "RemoteError": "crnet.runtime.remote",
    "UnknownSupportError": "crnet.runtime.remote",
    "MissingExtraError": "crnet.runtime.errors",
}


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_import_crnet_and_its_runtime_loads_no_engine() -> None:
    code = "import sys, crnet, crnet.runtime\n" + HEAVY_LOADED
    assert run_python(code) == ""


def test_the_public_names_load_no_engine() -> None:
    code = (
        "import sys\n"
        f"from crnet.runtime import {', '.join(PUBLIC)}\n"
        "from crnet import Segmenter as Shortcut, __version__\n"
        + HEAVY_LOADED
    )
    assert run_python(code) == ""


def test_the_check_sees_an_engine_that_is_loaded() -> None:
    pytest.importorskip("onnxruntime")
    code = "import sys, crnet.runtime, onnxruntime\n" + HEAVY_LOADED
    assert run_python(code) == "onnxruntime"


def test_import_runtime_modules_does_not_import_torch_or_tensorrt() -> None:
    code = (
        "import sys, crnet.runtime, crnet.runtime.files, crnet.runtime.segmenter\n"
        "import crnet.runtime.backends.onnxruntime_backend\n"
        "import crnet.runtime.backends.tensorrt_backend\n"
        "import crnet.models.torch_backend, crnet.runtime.backends.openvino_backend\n"
        "from crnet.runtime import Segmenter\n"
        "heavy = sorted(m for m in ('torch', 'tensorrt', 'onnxruntime', 'openvino')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    assert run_python(code) == ""


def test_version_is_the_installed_distribution_version() -> None:
    import crnet

    assert crnet.__version__ == metadata.version("crnet-deploy")
    assert crnet.__version__ != "0+unknown"


@pytest.mark.parametrize(("name", "home"), sorted(PUBLIC.items()))
def test_public_name_is_the_class_its_module_defines(name: str, home: str) -> None:
    import crnet.runtime

    public = getattr(crnet.runtime, name)
    assert public is getattr(importlib.import_module(home), name)
    assert name in crnet.runtime.__all__ and name in dir(crnet.runtime)


def test_the_errors_form_one_hierarchy() -> None:
    from crnet.runtime import (
        BackendError,
        BundleError,
        CrnetError,
        InputError,
        MissingExtraError,
        RemoteError,
        UnknownSupportError,
    )

    for error in (BackendError, BundleError, InputError, MissingExtraError, RemoteError,
                  UnknownSupportError):
        assert issubclass(error, CrnetError)
    # each is also the builtin an application without crnet-specific handling catches
    assert issubclass(InputError, ValueError) and issubclass(BundleError, ValueError)
    assert issubclass(BackendError, RuntimeError) and issubclass(RemoteError, BackendError)
    assert issubclass(UnknownSupportError, InputError)
    assert issubclass(MissingExtraError, ImportError)


def test_the_errors_are_what_the_runtime_raises(tmp_path: Path) -> None:
    import numpy as np

    from crnet.runtime import BundleError, CrnetError, InputError, RemoteSegmenter, Segmenter
    from crnet.runtime.preprocess import as_rgb_uint8

    with pytest.raises(BundleError) as missing:
        Segmenter(tmp_path / "no-bundle", backend="onnxruntime")
    assert isinstance(missing.value, CrnetError)
    with pytest.raises(InputError, match="dtype float64"):
        as_rgb_uint8(np.zeros((16, 16, 3)), "query image")
    with pytest.raises(InputError, match="precision must be one of"):
        Segmenter(tmp_path, precision="int4")
    with pytest.raises(InputError, match="expected host:port"):
        RemoteSegmenter("ftp://localhost:8000")


def test_crnet_shortcuts_are_the_runtime_classes() -> None:
    import crnet
    import crnet.runtime

    assert crnet.Segmenter is crnet.runtime.Segmenter
    assert crnet.RemoteSegmenter is crnet.runtime.RemoteSegmenter
    with pytest.raises(AttributeError, match="no attribute 'Segmentr'"):
        crnet.Segmentr  # noqa: B018 - the attribute access is the test
    with pytest.raises(AttributeError, match="crnet.runtime' has no attribute 'Nope'"):
        crnet.runtime.Nope  # noqa: B018


def test_onnxruntime_segmenter_never_imports_torch(runtime_bundle: Path) -> None:
    code = (
        "import sys\n"
        "import numpy as np\n"
        "from crnet.runtime import Segmenter\n"
        "from crnet.runtime.backends import availability\n"
        "availability()\n"
        f"seg = Segmenter({str(runtime_bundle)!r}, backend='onnxruntime')\n"
        "image = np.zeros((90, 120, 3), np.uint8)\n"
        "image[20:60, 30:90] = (200, 40, 40)\n"
        "mask = np.zeros((90, 120), np.uint8)\n"
        "mask[20:60, 30:90] = 1\n"
        "seg.set_support([image], [mask])\n"
        "result = seg.segment(image)\n"
        "list(seg.segment_stream([image, image]))\n"
        "assert result.shape == (90, 120) and result.dtype == bool\n"
        "assert seg.describe()['query_refine']['chained'] == 'yes'  # onnx, still no torch\n"
        "print(','.join(sorted(m for m in ('torch', 'tensorrt') if m in sys.modules)))\n"
    )
    assert run_python(code) == ""


def test_remote_segmenter_without_tritonclient_names_the_extra(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.runtime import MissingExtraError, RemoteSegmenter

    monkeypatch.setitem(sys.modules, "tritonclient.http", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'crnet-deploy\[remote\]'"):
        RemoteSegmenter("localhost:8000")
