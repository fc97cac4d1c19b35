"""An edge application: segment a camera's frames with crnet.runtime.Segmenter.

    python examples/edge_app.py BUNDLE                 # synthetic frames, backend "auto"
    python examples/edge_app.py BUNDLE --camera 0      # a camera, through OpenCV
    python examples/edge_app.py BUNDLE --backend onnxruntime --frames 200

The loop reads frames the way a camera application does (OpenCV's BGR frames), converts
each to the RGB the Segmenter expects, segments it against the current support set, and
switches to another support set half-way through the stream, as an application does when
the user picks another object. It runs a bounded number of frames and prints a latency
summary. It needs only the plain install (``pip install crnet-deploy``); OpenCV is used
for ``--camera`` only.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt

from crnet.runtime import CrnetError, Segmenter

Frame = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]


def synthetic_scene(index: int, height: int = 240, width: int = 320
                    ) -> tuple[Frame, Mask, Mask]:
    """Frame ``index`` of a synthetic camera stream, in BGR as OpenCV delivers frames, and
    the masks of its two objects: a red square and a blue disc moving across a textured
    background."""
    rng = np.random.default_rng(index)
    rows, cols = np.mgrid[0:height, 0:width]
    bgr = (rng.integers(60, 120, (height, width, 3))
           + (cols[..., None] * 40 // width)).astype(np.uint8)
    top, left = height // 4, (index * 7) % (width // 2)
    square = np.zeros((height, width), bool)
    square[top:top + height // 3, left:left + height // 3] = True
    centre_row, centre_col = 2 * height // 3, width - 1 - (index * 5) % (width // 2)
    disc = (rows - centre_row) ** 2 + (cols - centre_col) ** 2 < (height // 7) ** 2
    bgr[square] = (30, 30, 220)  # red, in OpenCV's blue-green-red order
    bgr[disc & ~square] = (220, 60, 30)  # blue
    return bgr, square, disc & ~square


def synthetic_frames(count: int) -> Iterator[Frame]:
    """``count`` BGR frames of the synthetic stream."""
    for index in range(count):
        yield synthetic_scene(index)[0]


def camera_frames(device: int, count: int) -> Iterator[Frame]:
    """Up to ``count`` BGR frames from an OpenCV camera (``pip install opencv-python``)."""
    try:
        import cv2  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise SystemExit("--camera needs OpenCV: pip install opencv-python") from None
    capture = cv2.VideoCapture(device)
    try:
        for _ in range(count):
            ok, frame = capture.read()
            if not ok:
                return
            yield np.asarray(frame, dtype=np.uint8)
    finally:
        capture.release()


def to_rgb(bgr: Frame) -> Frame:
    """OpenCV frames are BGR; the Segmenter takes RGB. Reversing the channel axis is the
    conversion (cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) does the same with a copy)."""
    return bgr[:, :, ::-1]


def centre_box(frame: Frame) -> Mask:
    """A support mask for a live camera: the object held in the middle of the view."""
    height, width = frame.shape[:2]
    mask = np.zeros((height, width), bool)
    mask[height // 4:3 * height // 4, width // 4:3 * width // 4] = True
    return mask


def run(segmenter: Segmenter, frames: Iterator[Frame], count: int, camera: bool
        ) -> list[float]:
    """Segment ``count`` frames, switching from the first object's support to the second's
    half-way; returns each frame's latency in milliseconds (conversion and segmentation)."""
    switch_at = count // 2
    if not camera:
        scene, square, _ = synthetic_scene(0)
        segmenter.set_support([to_rgb(scene)], [square])
    latencies: list[float] = []
    for index, bgr in enumerate(frames):
        if camera and index == 0:
            segmenter.set_support([to_rgb(bgr)], [centre_box(bgr)])
        if index == switch_at:
            # Another object: encode its support once; the following frames use it.
            if camera:
                support, mask = bgr, centre_box(bgr)
            else:
                support, _, mask = synthetic_scene(1000)
            segmenter.set_support([to_rgb(support)], [mask])
            print(f"frame {index}: switched to the second object's support")
        start = time.perf_counter()
        mask_out = segmenter.segment(to_rgb(bgr))
        latencies.append((time.perf_counter() - start) * 1000.0)
        if index % max(1, count // 5) == 0:
            print(f"frame {index}: {mask_out.mean():.1%} of the frame is the object, "
                  f"{latencies[-1]:.1f} ms")
    return latencies


def summary(latencies: list[float]) -> str:
    """Median, 90th percentile and worst latency, and the frame rate they allow."""
    values = np.asarray(latencies)
    p50, p90 = np.percentile(values, [50, 90])
    return (f"{len(values)} frames: p50 {p50:.1f} ms, p90 {p90:.1f} ms, "
            f"max {values.max():.1f} ms ({1000.0 / values.mean():.0f} frames/s)")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, segment the stream, print the latency summary."""
    parser = argparse.ArgumentParser(description="Segment a camera stream on the edge.")
    parser.add_argument("bundle", type=Path, help="a bundle from `crnet export`/`crnet deploy`")
    parser.add_argument("--backend", default="auto",
                        help="auto, onnxruntime, openvino, tensorrt or torch")
    parser.add_argument("--precision", default="fp32", help="fp32, fp16 or int8")
    parser.add_argument("--frames", type=int, default=100, help="how many frames to run")
    parser.add_argument("--camera", type=int, default=None,
                        help="an OpenCV camera index; synthetic frames without it")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    camera = args.camera is not None
    try:
        with Segmenter(args.bundle, backend=args.backend, precision=args.precision) as seg:
            print(f"backend {seg.backend_name} ({seg.choice['why']})")
            frames = (camera_frames(args.camera, args.frames) if camera
                      else synthetic_frames(args.frames))
            latencies = run(seg, frames, args.frames, camera)
    except CrnetError as error:  # a bad bundle, input or backend: say what, no traceback
        print(f"edge_app: {error}", file=sys.stderr)
        return 1
    if not latencies:
        print("edge_app: the camera gave no frame", file=sys.stderr)
        return 1
    print(summary(latencies))
    return 0


if __name__ == "__main__":
    sys.exit(main())
