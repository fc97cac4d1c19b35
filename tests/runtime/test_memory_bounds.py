"""Pre-processing memory stays proportional to the output size, measured under an
address-space limit (RLIMIT_AS) in a subprocess, not guessed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEADROOM_MB = 96  # address space allowed beyond what the process holds before the call

# Runs in a fresh interpreter: builds the input, warms up, measures the address space in
# use, caps it at that plus HEADROOM_MB, then calls the function under test.
SCRIPT = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from crnet.runtime import preprocess as p

    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
        raise SystemExit("no VmSize")

    case, headroom = sys.argv[1], int(sys.argv[2]) << 20
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    height, width = 8, 2_000_000
    small_image = np.zeros((8, 8, 3), np.uint8)
    small_mask = np.ones((8, 8), np.uint8)
    p.preprocess_image(small_image, (193, 193), mean, std)
    p.preprocess_mask(small_mask, (193, 193), (25, 25))
    if case == "rgb":
        data = np.full((height, width, 3), 7, np.uint8)
        call = lambda: p.preprocess_image(data, (193, 193), mean, std)
    elif case == "gray":
        data = np.full((height, width), 7, np.uint8)
        call = lambda: p.preprocess_image(data, (193, 193), mean, std)
    elif case == "rgba":
        data = np.full((height, width, 4), 7, np.uint8)
        call = lambda: p.preprocess_image(data, (193, 193), mean, std)
    elif case == "mask":
        data = np.zeros((height, width), np.uint8)
        data[:, ::3] = 1
        data[:, 1::7] = 255
        call = lambda: p.preprocess_mask(data, (193, 193), (25, 25))
    elif case == "bool-mask":
        data = np.zeros((height, width), np.bool_)
        data[:, ::3] = True
        call = lambda: p.preprocess_mask(data, (193, 193), (25, 25))
    elif case == "tall":
        data = np.full((width, height, 3), 7, np.uint8)
        call = lambda: p.preprocess_image(data, (193, 193), mean, std)
    elif case == "wide-output":  # post-processing: the mask itself is output-sized
        logits = np.random.default_rng(0).standard_normal((2, 25, 25)).astype(np.float32)
        headroom += 8 * 4_000_000
        call = lambda: p.mask_from_logits(logits, (8, 4_000_000))
    else:
        raise SystemExit("unknown case " + case)
    limit = vm_bytes() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    out = call()
    assert out.dtype == np.bool_ or np.isfinite(out).all()
    print("ok", out.shape)
""")


@pytest.mark.parametrize("case", ["rgb", "gray", "rgba", "mask", "bool-mask", "tall",
                                  "wide-output"])
def test_wide_input_preprocesses_within_an_address_space_limit(case: str) -> None:
    """An 8x2,000,000 input (16 MP, within MAX_PIXELS) needs a few MB beyond itself; a
    mask produced at 8x4,000,000 needs a few MB beyond the mask."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", SCRIPT, case, str(HEADROOM_MB)],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, (
        f"{case}: pre-processing needed more than {HEADROOM_MB} MB beyond its input:\n"
        f"{result.stderr[-2000:]}")
