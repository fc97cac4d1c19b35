"""`python tools/memory_probe.py`: memory that pre- and post-processing need beyond the
caller's own image, for the extreme shapes the runtime accepts (numpy only).

Each case runs in a fresh interpreter: the input is built first, then the call is made
and two figures are printed: the peak of numpy's traced allocations during the call
(tracemalloc) and the growth of the process's peak resident memory (VmHWM) over what it
held before the call. Both are bounded by the output size, not the input's shape.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

CASES = {
    # name: (description, input shape, kind)
    "widest": ("8 x 12,500,000 RGB image (100 MP, widest accepted)", (8, 12_500_000, 3),
               "image"),
    "tallest": ("12,500,000 x 8 RGB image (100 MP, tallest accepted)", (12_500_000, 8, 3),
                "image"),
    "square": ("10,000 x 10,000 RGB image (100 MP)", (10_000, 10_000, 3), "image"),
    "widest-gray": ("8 x 12,500,000 grayscale image", (8, 12_500_000), "image"),
    "widest-mask": ("8 x 12,500,000 support mask (0/1/255)", (8, 12_500_000), "mask"),
    "widest-output": ("mask at 8 x 12,500,000 from 25x25 logits (output-sized)",
                      (8, 12_500_000), "postprocess"),
}

_CHILD = """
import json, sys, tracemalloc
import numpy as np
from crnet.runtime import preprocess as p

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0

shape, kind = json.loads(sys.argv[1]), sys.argv[2]
mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
if kind == "image":
    data = np.full(shape, 7, np.uint8)
    call = lambda: p.preprocess_image(data, (193, 193), mean, std)
elif kind == "mask":
    data = np.zeros(shape, np.uint8); data[:, ::3] = 1
    call = lambda: p.preprocess_mask(data, (193, 193), (25, 25))
else:
    logits = np.random.default_rng(0).standard_normal((2, 25, 25)).astype(np.float32)
    data = None
    call = lambda: p.mask_from_logits(logits, shape)
p.preprocess_image(np.zeros((16, 16, 3), np.uint8), (193, 193), mean, std)  # warm-up
output_bytes = 193 * 193 * 3 * 4 if kind == "image" else (
    25 * 25 * 4 if kind == "mask" else shape[0] * shape[1])
before = hwm()
tracemalloc.start()
out = call()
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"traced_peak_bytes": traced_peak, "hwm_growth_bytes": hwm() - before,
                  "input_bytes": 0 if data is None else int(data.nbytes),
                  "output_bytes": int(out.nbytes)}))
"""


def probe(case: str) -> dict[str, Any]:
    """Run one case in a fresh interpreter and return its figures."""
    description, shape, kind = CASES[case]
    result = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(shape), kind],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{case}: {result.stderr.strip()[-500:]}")
    return {"case": case, "description": description, **json.loads(result.stdout)}


def main(argv: list[str] | None = None) -> int:
    """Print the figures of every case (or the chosen ones)."""
    parser = argparse.ArgumentParser(prog="python tools/memory_probe.py",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", metavar="CASE",
                        help=f"which cases (default all): {', '.join(CASES)}")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s) {unknown}; known: {', '.join(CASES)}")
    mb = 1 << 20
    for case in args.cases or list(CASES):
        figures = probe(case)
        if args.json:
            print(json.dumps(figures))
            continue
        print(f"{figures['description']:<58} input {figures['input_bytes'] / mb:7.1f} MB  "
              f"output {figures['output_bytes'] / mb:6.1f} MB  traced peak "
              f"{figures['traced_peak_bytes'] / mb:6.1f} MB  VmHWM growth "
              f"{figures['hwm_growth_bytes'] / mb:6.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
