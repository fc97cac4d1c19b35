"""Timing helpers shared by `crnet bench` and `crnet bench --compare`: percentiles,
interleaved blocks, the numpy sgemm peak, FLOPs of a bundle, episode queries and the
PyTorch full forward. (Kept apart so latency.py and compare.py import it, not each
other.)"""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.progress import Progress, bar, track

MATMUL_SIZE = 1024
INTERLEAVE_BLOCK = 10

_MATMUL_SCRIPT = """
import time, numpy as np
n = {size}
rng = np.random.default_rng(0)
a = rng.standard_normal((n, n), dtype=np.float32)
b = rng.standard_normal((n, n), dtype=np.float32)
a @ b
best = float("inf")
for _ in range({repeats}):
    start = time.perf_counter()
    a @ b
    best = min(best, time.perf_counter() - start)
print(2 * n ** 3 / best / 1e9)
"""


def memory_mb(field: str = "VmRSS") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process in MB."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    if field == "VmHWM":  # ru_maxrss: kilobytes on Linux, bytes on macOS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)
    return float("nan")


def percentiles(times_s: Sequence[float]) -> dict[str, float]:
    """p50/p90/p99/mean/min/max of durations, in milliseconds."""
    ms = np.asarray(times_s, dtype=np.float64) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p90": float(np.percentile(ms, 90)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()),
            "min": float(ms.min()), "max": float(ms.max()), "count": int(ms.size)}


def time_calls(call: Callable[[int], object], iterations: int, warmup: int,
               progress: bool | Progress = False, description: str = "") -> list[float]:
    """Durations in seconds of ``call(i)`` for i in range(iterations), after ``warmup``."""
    for index in range(warmup):
        call(index)
    times = []
    for index in track(range(iterations), progress, description):
        start = time.perf_counter()
        call(index)
        times.append(time.perf_counter() - start)
    return times


def matmul_peak_gflops(threads: int, size: int = MATMUL_SIZE, repeats: int = 10) -> float:
    """Best GFLOP/s of a numpy float32 ``size``x``size`` matmul at ``threads`` BLAS threads.

    Runs in a subprocess so the thread count applies to the BLAS at its start.
    """
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[name] = str(threads)
    result = subprocess.run(
        [sys.executable, "-c", _MATMUL_SCRIPT.format(size=size, repeats=repeats)],
        capture_output=True, text=True, env=env, check=True, timeout=300)
    return float(result.stdout.strip().splitlines()[-1])


def model_flops(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """FLOPs of one image's encode, one 1-shot refine, its query branch alone and one 1-shot
    forward: manifest first, else models.summary (needs torch); None when neither is
    possible. A manifest written before the query branch was counted gives refine_query
    None."""
    stored = manifest.get("flops")
    if isinstance(stored, dict) and {"encode", "refine"} <= set(stored):
        encode, refine = int(stored["encode"]), int(stored["refine"])
        query = stored.get("refine_query")
        return {"encode": encode, "refine": refine,
                "refine_query": int(query) if query is not None else None,
                "forward": int(stored.get("forward", 2 * encode + refine)),
                "source": "manifest"}
    if importlib.util.find_spec("torch") is None:
        return None
    from crnet.models.config import CRNetConfig
    from crnet.models.summary import summarize

    summary = summarize(CRNetConfig.from_dict(manifest["model"]))
    return {"encode": summary.encode_flops, "refine": summary.refine_flops,
            "refine_query": summary.refine_query_flops, "forward": summary.forward_flops,
            "source": "crnet.models.summary"}


def load_queries(shots: int, count: int, fold: int, seed: int,
                 dataset: str = "synthetic-5i", data_root: Path | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Support images, support masks (episode 0) and ``count`` query images (episodes 0..)
    of ``dataset``'s test episodes of ``fold`` (data.evaluation.episode_source)."""
    from crnet.data.evaluation import episode_source

    source = episode_source(dataset, fold, seed, data_root, split="test")
    first = source.episode(0, shots)
    queries = [first.query_image] + [source.episode(i, 1).query_image
                                     for i in range(1, count)]
    return list(first.support_images), list(first.support_masks), queries


GENERATED_SIZE = (321, 321)
"""Height and width of the generated frames: the size of a synthetic-5i image."""


def synthetic_available() -> bool:
    """Whether synthetic-5i can be drawn here: it takes its textures from scikit-image
    (the ``export`` extra), which the plain install does not have."""
    return importlib.util.find_spec("skimage") is not None


def generated_frames(shots: int, count: int, seed: int = 0,
                     size: tuple[int, int] = GENERATED_SIZE
                     ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Support images, their 0/1 masks and ``count`` query images made with numpy alone:
    a smooth colour gradient with noise, holding an ellipse of another colour (the mask).
    Timing does not depend on the pictures, so these stand in for episodes where no dataset
    can be drawn; the same seed gives the same frames."""
    rng = np.random.default_rng(seed)
    height, width = size
    rows = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    cols = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)

    def frame() -> tuple[np.ndarray, np.ndarray]:
        low, high, ink = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
        image = low + (high - low) * (0.5 * rows + 0.5 * cols)
        centre = rng.uniform(0.3, 0.7, 2) * (height, width)
        radii = rng.uniform(0.15, 0.3, 2) * (height, width)
        mask = (((y - centre[0]) / radii[0]) ** 2 + ((x - centre[1]) / radii[1]) ** 2) <= 1
        image[mask] = ink
        image += rng.normal(0.0, 8.0, size=image.shape).astype(np.float32)
        return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8)

    supports = [frame() for _ in range(shots)]
    queries = [frame()[0] for _ in range(count)]
    return [image for image, _ in supports], [mask for _, mask in supports], queries


def bench_inputs(shots: int, count: int, fold: int, seed: int,
                 dataset: str = "synthetic-5i", data_root: Path | None = None
                 ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """The support, its masks and ``count`` queries a benchmark times, and what they are:
    ``dataset``'s test episodes (load_queries), or, for synthetic-5i where scikit-image is
    not installed (the plain install), ``generated_frames`` of the same size."""
    if dataset == "synthetic-5i" and not synthetic_available():
        images, masks, queries = generated_frames(shots, count, seed)
        return images, masks, queries, {
            "dataset": "generated", "seed": seed,
            "note": "numpy-generated frames (synthetic-5i needs scikit-image, from the "
                    "export extra)"}
    images, masks, queries = load_queries(shots, count, fold, seed, dataset, data_root)
    return images, masks, queries, {"dataset": dataset, "split": "test", "fold": fold,
                                    "seed": seed}


def checkpoint_copy(bundle_root: Path) -> Path:
    """The bundle's copy of its source checkpoint's weights (a slimmed bundle may lack it)."""
    from crnet.runtime.bundle import read_manifest

    manifest = read_manifest(Path(bundle_root))  # checked by the bundle schema
    return Path(bundle_root) / manifest.get("checkpoint", {}).get(
        "weights", "checkpoint.safetensors")


def torch_forward(bundle_root: Path, support_images: list[np.ndarray],
                  support_masks: list[np.ndarray], query: np.ndarray, threads: int
                  ) -> Callable[[int], object]:
    """A call running ``CRNet.forward`` (encode support and query, refine) in torch on
    inputs preprocessed once, with ``threads`` intra-op threads."""
    import torch

    from crnet.models.checkpoint import load_checkpoint
    from crnet.runtime.preprocess import mask_at_input_size, preprocess_image

    model, info = load_checkpoint(checkpoint_copy(bundle_root))
    config = info.config
    torch.set_num_threads(threads)
    supports = torch.from_numpy(np.concatenate([
        preprocess_image(image, config.input_size, config.mean, config.std)
        for image in support_images]))
    masks = torch.from_numpy(np.concatenate([
        mask_at_input_size(mask, config.input_size) for mask in support_masks]))
    query_tensor = torch.from_numpy(preprocess_image(query, config.input_size, config.mean,
                                                     config.std))

    def forward(_: int) -> None:
        with torch.inference_mode():
            model(query_tensor, supports, masks)

    return forward


def interleaved_times(calls: dict[str, Callable[[int], object]], iterations: int, warmup: int,
                      progress: bool | Progress, block: int = INTERLEAVE_BLOCK
                      ) -> dict[str, list[float]]:
    """Durations of several calls, alternated in blocks of ``block`` calls so that they share
    the machine's load (other processes, thermal state) instead of meeting it at different
    times. Blocks rather than single calls: each runtime's thread pool spins for a while
    after a call, and alternating call by call would time one pool against the other's
    spinning threads on the same cores."""
    for index in range(warmup):
        for call in calls.values():
            call(index)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with bar(progress, iterations * len(calls), "vs torch") as running:
        for first in range(0, iterations, block):
            indices = range(first, min(first + block, iterations))
            for name, call in calls.items():
                call(indices[0])  # settle this runtime's thread pool after the switch
                for index in indices:
                    start = time.perf_counter()
                    call(index)
                    times[name].append(time.perf_counter() - start)
                    running.update(1)
    return times
