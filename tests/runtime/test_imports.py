from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    return result.stdout.strip()


def test_import_runtime_does_not_import_torch_or_tensorrt() -> None:
    code = (
        "import sys, runtime, runtime.files, runtime.segmenter, runtime.backends\n"
        "import crnet.runtime.backends.onnxruntime_backend, runtime.backends.tensorrt_backend\n"
        "import crnet.models.torch_backend, runtime.backends.openvino_backend\n"
        "from crnet.runtime import Segmenter\n"
        "heavy = sorted(m for m in ('torch', 'tensorrt', 'onnxruntime', 'openvino')\n"
        "               if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    assert run_python(code) == ""


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
