"""Same checkpoint + same code -> the same ONNX bytes, whichever entry point exports it:
the script (``python export/to_onnx.py``, run as ``__main__``) or the library function
that ``crnet deploy`` and ``crnet export`` call (export.to_onnx.export_bundle)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from crnet.runtime.files import sha256_file

ROOT = Path(__file__).resolve().parents[2]


def test_script_and_library_exports_are_byte_identical(tiny_checkpoint: Path,
                                                       tiny_bundle: Path,
                                                       tmp_path: Path) -> None:
    """tiny_bundle was exported in-process (export_bundle, as `crnet deploy` does)."""
    out = tmp_path / "script-bundle"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(ROOT / "export" / "to_onnx.py"), "--checkpoint",
         str(tiny_checkpoint), "--out", str(out), "--episodes", "1", "--no-progress"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("backbone.fp32.onnx", "refine.fp32.onnx"):
        assert sha256_file(out / name) == sha256_file(tiny_bundle / name), (
            f"{name} differs between `python export/to_onnx.py` and export_bundle()")
    # the node metadata names the wrapper by its module: never the script's __main__
    data = (out / "backbone.fp32.onnx").read_bytes()
    assert b"export.graphs.BackboneGraph" in data and b"__main__." not in data
