"""`python tools/frame_layouts_bench.py [BUNDLE]`: ms per ``Segmenter.segment`` call for the
frames apps hold, against a contiguous RGB frame of the same size.

Layouts: contiguous RGB; a BGR view (``frame[..., ::-1]`` of an OpenCV frame, read as
RGB); the OpenCV frame itself with ``channels="bgr"``; grayscale HxW; RGBA HxWx4; a crop of
a larger frame. Sizes: 640x480 and 1920x1080 (``--sizes`` to change). The calls of all
layouts are interleaved round by round and the median is reported, so a machine whose
load drifts (shared cores) shifts every layout alike; the last column is the ratio to
contiguous RGB. ``--preprocess-only`` times the image's resize + normalisation alone (no
backend), which is where the layouts differ.

Without BUNDLE the shipped crnet-lite checkpoint is exported to a temporary bundle first
(needs the ``[export]`` extra).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

SIZES = ((480, 640), (1080, 1920))


def layouts(height: int, width: int, seed: int = 0) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (image, channels): one random picture in each layout."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rgba = np.concatenate([rgb, np.full((height, width, 1), 255, np.uint8)], axis=2)
    larger = np.zeros((height + 64, width + 64, 3), np.uint8)
    larger[32:-32, 32:-32] = rgb
    return {
        "rgb (contiguous)": (rgb, "rgb"),
        "bgr view frame[..., ::-1]": (bgr[..., ::-1], "rgb"),
        "bgr frame, channels=bgr": (bgr, "bgr"),
        "grayscale HxW": (np.ascontiguousarray(rgb[:, :, 1]), "rgb"),
        "rgba HxWx4": (rgba, "rgb"),
        "crop of a larger frame": (larger[32:-32, 32:-32], "rgb"),
    }


def median_ms(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median ms per call of each callable, the callables interleaved round by round."""
    for call in calls.values():  # warm-up: plans, scratch arrays, compiled loops
        call()
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def timed_call(segmenter: Any, image: np.ndarray, channels: str, preprocess_only: bool
               ) -> Callable[[], object]:
    """What one timed call runs: ``segment()``, or the preprocessing alone."""
    if not preprocess_only:
        return lambda: segmenter.segment(image, channels=channels)
    from crnet.runtime.preprocess import preprocess_image

    spec = segmenter.spec
    out = np.empty((1, 3, *spec.input_size), np.float32)
    return lambda: preprocess_image(image, spec.input_size, spec.mean, spec.std, out=out,
                                    channels=channels)


def main(argv: list[str] | None = None) -> int:
    """Print the table; exit 0."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", nargs="?", type=Path)
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--sizes", default="480x640,1080x1920",
                        help="HxW sizes, comma-separated (default: %(default)s)")
    parser.add_argument("--preprocess-only", action="store_true",
                        help="time the resize + normalisation alone, without the backend")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]

    from crnet.runtime import Segmenter
    from crnet.runtime.resize_kernels import available

    with tempfile.TemporaryDirectory() as scratch_dir:
        bundle = args.bundle
        if bundle is None:
            from crnet.export.to_onnx import export_bundle

            bundle = Path(scratch_dir) / "bundle"
            print("exporting the shipped checkpoint to a temporary bundle ...", flush=True)
            export_bundle(bundle, parity_episodes=1, progress=False)
        with Segmenter(bundle, backend=args.backend, precision=args.precision,
                       threads=args.threads) as segmenter:
            from crnet.data.synthetic import Synthetic5i

            episode = Synthetic5i(0, split="test", seed=0).episode(0, 1)
            segmenter.set_support(list(episode.support_images), list(episode.support_masks))
            compiled, why = available()
            what = "preprocess only" if args.preprocess_only else "segment()"
            print(f"{what}: {segmenter.backend_name} {segmenter.precision}, "
                  f"{args.threads} thread(s), input {segmenter.spec.input_size}, "
                  f"resize loop: {'numba' if compiled else 'numpy (' + why + ')'}; "
                  f"median of {args.rounds} interleaved rounds")
            worst = 0.0
            for height, width in sizes:
                frames = layouts(height, width)
                calls = {name: timed_call(segmenter, image, channels, args.preprocess_only)
                         for name, (image, channels) in frames.items()}
                timings = median_ms(calls, args.rounds)
                base = timings["rgb (contiguous)"]
                print(f"\n{width}x{height}")
                print(f"  {'layout':<28} {'ms/frame':>9} {'vs rgb':>7}")
                for name, ms in timings.items():
                    print(f"  {name:<28} {ms:>9.2f} {ms / base:>7.2f}")
                    worst = max(worst, ms / base)
            print(f"\nslowest layout: {worst:.2f}x contiguous RGB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
