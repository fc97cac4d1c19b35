"""`crnet bench-remote URL --clients N --requests M`: load a `crnet serve` server.

N client threads, each with its own RemoteSegmenter and its own support set, send M
`segment` requests each (bounded also by ``--max-seconds``) and the command prints
throughput, p50/p99 latency and errors (and writes them as JSON with ``--json``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class ClientResult:
    """What one client thread saw."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def client_support(index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A distinct support per client: a coloured ellipse (the object) on textured noise."""
    rng = np.random.default_rng(1000 + index)
    height, width = size
    image = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    rows, cols = np.ogrid[:height, :width]
    centre_y, centre_x = rng.uniform(0.3, 0.7, 2) * (height, width)
    radius_y, radius_x = rng.uniform(0.15, 0.3, 2) * (height, width)
    mask = ((rows - centre_y) / radius_y) ** 2 + ((cols - centre_x) / radius_x) ** 2 <= 1
    image[mask] = rng.integers(120, 255, 3, dtype=np.uint8)
    return image, mask.astype(np.uint8)


def run_client(url: str, index: int, requests: int, size: tuple[int, int],
               deadline: float, result: ClientResult, start: threading.Barrier) -> None:
    """One client: register its support, then ``requests`` segment calls until deadline."""
    from crnet.runtime.remote import RemoteSegmenter

    image, mask = client_support(index, size)
    query = np.ascontiguousarray(np.roll(image, (size[0] // 10, size[1] // 10), axis=(0, 1)))
    with RemoteSegmenter(url, retry_timeout_s=5.0) as segmenter:
        try:
            segmenter.set_support([image], [mask])
            segmenter.segment(query)  # warm the connection; not counted
        except Exception as error:  # noqa: BLE001 - counted and printed, not raised
            result.errors.append(f"{type(error).__name__}: {error}")
        start.wait()
        for _ in range(requests):
            if time.monotonic() > deadline or result.errors:
                break
            began = time.perf_counter()
            try:
                segmenter.segment(query)
            except Exception as error:  # noqa: BLE001
                result.errors.append(f"{type(error).__name__}: {error}")
                continue
            result.latencies_ms.append((time.perf_counter() - began) * 1e3)


def bench_remote(url: str, clients: int, requests: int, size: tuple[int, int] = (321, 321),
                 max_seconds: float = 120.0) -> dict[str, Any]:
    """Drive ``clients`` concurrent clients; throughput, latency percentiles and errors."""
    results = [ClientResult() for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline = time.monotonic() + max_seconds
    threads = [threading.Thread(target=run_client, name=f"client-{index}",
                                args=(url, index, requests, size, deadline, results[index],
                                      start), daemon=True)
               for index in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()) + 10)
    wall_s = time.perf_counter() - began
    latencies = np.array([value for result in results for value in result.latencies_ms])
    errors = [error for result in results for error in result.errors]
    return {
        "url": url, "clients": clients, "requests_per_client": requests,
        "image_size": list(size), "completed": int(latencies.size), "errors": len(errors),
        "first_errors": errors[:5], "wall_s": round(wall_s, 3),
        "throughput_rps": round(latencies.size / wall_s, 2) if wall_s > 0 else 0.0,
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        "per_client": [asdict(result) | {"latencies_ms": len(result.latencies_ms)}
                       for result in results],
    }
