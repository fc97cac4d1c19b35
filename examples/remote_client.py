"""A client of ``crnet serve``: segment frames on a server with crnet.runtime.RemoteSegmenter.

    crnet serve BUNDLE                                 # the server (the ``serve`` extra)
    python examples/remote_client.py localhost:8000    # HTTP; grpc://localhost:8001 for gRPC

The client registers a support set once (the server keeps it and answers with its id),
segments a few frames one request at a time to measure the round trip, then streams the
rest with requests pipelined, and switches to another support set half-way. It needs the
``remote`` extra (``pip install 'crnet-deploy[remote]'``): numpy and tritonclient, no torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from crnet.runtime import CrnetError, InputError, RemoteError, RemoteSegmenter

Image = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
TIMED_REQUESTS = 3  # frames segmented one request at a time, for the round-trip latency


def scene(index: int, height: int = 120, width: int = 160) -> tuple[Image, Mask, Mask]:
    """Frame ``index`` of a synthetic RGB stream and the masks of its two objects (a red
    square and a blue disc)."""
    rng = np.random.default_rng(index)
    rows, cols = np.mgrid[0:height, 0:width]
    rgb = rng.integers(60, 120, (height, width, 3)).astype(np.uint8)
    left = (index * 5) % (width // 2)
    square = np.zeros((height, width), bool)
    square[height // 4:height // 4 + height // 3, left:left + height // 3] = True
    disc = (rows - 2 * height // 3) ** 2 + (cols - 3 * width // 4) ** 2 < (height // 7) ** 2
    disc &= ~square
    rgb[square] = (220, 30, 30)
    rgb[disc] = (30, 60, 220)
    return rgb, square, disc


def frames(start: int, stop: int) -> Iterator[Image]:
    """Frames ``start`` to ``stop - 1`` of the synthetic stream."""
    for index in range(start, stop):
        yield scene(index)[0]


def run(segmenter: RemoteSegmenter, count: int) -> None:
    """Register a support, time single requests, then stream the frames, switching objects
    half-way; prints what the server answered."""
    support, square, disc = scene(0)
    segmenter.set_support([support], [square])
    print(f"support registered as {segmenter.support_id}")
    timed = min(TIMED_REQUESTS, count)
    round_trips: list[float] = []
    for image in frames(0, timed):
        start = time.perf_counter()
        mask, probability = segmenter.segment(image, return_prob=True)
        round_trips.append((time.perf_counter() - start) * 1000.0)
        print(f"mask {mask.shape[0]}x{mask.shape[1]}: {mask.mean():.1%} object, "
              f"mean probability {probability.mean():.2f}")
    print(f"round trip: {np.median(round_trips):.1f} ms (median of {timed})")

    switch_at = max(timed, count // 2)
    start, streamed, covered = time.perf_counter(), 0, 0.0
    for mask in segmenter.segment_stream(frames(timed, switch_at)):
        streamed, covered = streamed + 1, covered + float(mask.mean())
    segmenter.set_support([support], [disc])  # another object: registered once, again
    print(f"switched to the second object's support ({segmenter.support_id})")
    for mask in segmenter.segment_stream(frames(switch_at, count)):
        streamed, covered = streamed + 1, covered + float(mask.mean())
    if streamed:
        elapsed = time.perf_counter() - start
        print(f"streamed {streamed} frames: {streamed / elapsed:.0f} frames/s, "
              f"{covered / streamed:.1%} object on average")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the client, report errors as one line."""
    parser = argparse.ArgumentParser(description="Segment frames on a crnet serve server.")
    parser.add_argument("url", help="host:port (HTTP), http://host:port or grpc://host:port")
    parser.add_argument("--frames", type=int, default=20, help="how many frames to send")
    parser.add_argument("--retry-timeout", type=float, default=10.0,
                        help="seconds to keep retrying while the server is unreachable")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error(f"--frames must be at least 1, got {args.frames}")
    try:
        with RemoteSegmenter(args.url, retry_timeout_s=args.retry_timeout) as segmenter:
            run(segmenter, args.frames)
    except InputError as error:  # the server refused an image or mask: the input's fault
        print(f"remote_client: input refused: {error}", file=sys.stderr)
        return 1
    except RemoteError as error:  # unreachable after the retries, or failed server-side
        print(f"remote_client: server error: {error}", file=sys.stderr)
        return 1
    except CrnetError as error:  # e.g. tritonclient not installed
        print(f"remote_client: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
