from __future__ import annotations

import subprocess
import sys


def test_import_runtime_does_not_import_torch_or_tensorrt() -> None:
    code = (
        "import sys, runtime, runtime.files\n"
        "heavy = sorted(m for m in ('torch', 'tensorrt') if m in sys.modules)\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == ""
