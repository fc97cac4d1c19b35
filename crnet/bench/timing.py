"""Timing helpers shared by `crnet bench` and `crnet bench --compare`: percentiles,
interleaved blocks, the numpy sgemm peak, FLOPs of a bundle, episode queries and the
PyTorch full forward. (Kept apart so bench.py and bench_compare.py import it, not each
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
               progress: bool = False, description: str = "") -> list[float]:
    """Durations in seconds of ``call(i)`` for i in range(iterations), after ``warmup``."""
    from tqdm import tqdm

    for index in range(warmup):
        call(index)
    times = []
    for index in tqdm(range(iterations), desc=description, disable=not progress, leave=False):
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


def torch_forward(bundle_root: Path, support_images: list[np.ndarray],
                  support_masks: list[np.ndarray], query: np.ndarray, threads: int
                  ) -> Callable[[int], object]:
    """A call running ``CRNet.forward`` (encode support and query, refine) in torch on
    inputs preprocessed once, with ``threads`` intra-op threads."""
    import torch

    from crnet.models.checkpoint import load_checkpoint
    from crnet.runtime.bundle import Bundle
    from crnet.runtime.preprocess import mask_at_input_size, preprocess_image

    bundle = Bundle.load(bundle_root, verify=False)
    weights = bundle.root / bundle.manifest.get("checkpoint", {}).get(
        "weights", "checkpoint.safetensors")
    model, info = load_checkpoint(weights)
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
                      progress: bool, block: int = INTERLEAVE_BLOCK) -> dict[str, list[float]]:
    """Durations of several calls, alternated in blocks of ``block`` calls so that they share
    the machine's load (other processes, thermal state) instead of meeting it at different
    times. Blocks rather than single calls: each runtime's thread pool spins for a while
    after a call, and alternating call by call would time one pool against the other's
    spinning threads on the same cores."""
    from tqdm import tqdm

    for index in range(warmup):
        for call in calls.values():
            call(index)
    times: dict[str, list[float]] = {name: [] for name in calls}
    with tqdm(total=iterations * len(calls), desc="vs torch", disable=not progress,
              leave=False) as bar:
        for first in range(0, iterations, block):
            indices = range(first, min(first + block, iterations))
            for name, call in calls.items():
                call(indices[0])  # settle this runtime's thread pool after the switch
                for index in indices:
                    start = time.perf_counter()
                    call(index)
                    times[name].append(time.perf_counter() - start)
                    bar.update(1)
    return times
