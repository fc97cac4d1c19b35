"""`crnet bench BUNDLE --under-load`: per-episode evaluation time, quiet and beside a CPU hog.

    crnet bench BUNDLE --under-load [--episodes-per-round 20 --rounds 3 --threads 2]

The evaluation loop of ``crnet eval`` / ``crnet deploy`` (per episode: ``set_support`` then
``segment``) runs for each path: the PyTorch reference (torch backend on the bundle's
checkpoint), ONNX Runtime fp32 and int8, OpenVINO int8 where installed, and "deploy", the
reference and the ORT variants one after the other as deploy's evaluation runs them.
A child Python process spinning ``while True``, pinned to one core (the last one), runs
for the whole measurement and is paused (SIGSTOP) for the quiet halves and resumed
(SIGCONT) for the loaded ones; each path alternates short quiet and loaded blocks, so
on a shared machine both halves meet the same background. Prints the median seconds
per episode of each half and their ratio. A benchmark prints numbers; nothing here asserts a time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

HOG_CODE = ("import os, sys\n"
            "cpu = int(sys.argv[1])\n"
            "if cpu >= 0 and hasattr(os, 'sched_setaffinity'):\n"
            "    os.sched_setaffinity(0, {cpu})\n"
            "while True:\n"
            "    pass\n")
LOAD_TARGET = 2.5


@contextlib.contextmanager
def cpu_hog(cpu: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """A child process spinning on one core (``cpu``; None: the last core) while the
    ``with`` block runs; stopped (terminate, then kill) when it ends."""
    if cpu is None:
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        cpu = cores[-1]
    hog = subprocess.Popen([sys.executable, "-c", HOG_CODE, str(cpu)])
    try:
        time.sleep(0.2)  # let it reach its loop
        yield hog
    finally:
        hog.terminate()
        try:
            hog.wait(timeout=5)
        except subprocess.TimeoutExpired:
            hog.kill()
            hog.wait()


@contextlib.contextmanager
def hog_paused(hog: subprocess.Popen[bytes]) -> Iterator[None]:
    """The hog stopped (SIGSTOP) inside the block, running again after it."""
    os.kill(hog.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(hog.pid, signal.SIGCONT)
        time.sleep(0.02)  # let it take its core back before the loaded block


def episode_seconds(predict: Callable[[Any], object], episodes: list[Any]) -> list[float]:
    """Seconds of ``predict(episode)`` for each episode."""
    times = []
    for episode in episodes:
        started = time.perf_counter()
        predict(episode)
        times.append(time.perf_counter() - started)
    return times


def predictors(bundle: Path, threads: int, options: dict[str, dict[str, Any]] | None = None
               ) -> tuple[dict[str, Callable[[Any], object]], list[Any]]:
    """The paths timed (module docstring) as episode -> mask callables, and the
    Segmenters to close."""
    from crnet.data.evaluation import segmenter_predictor
    from crnet.runtime import Segmenter
    from crnet.runtime.backends.base import (
        CPU_BUILD_BACKEND,
        REFERENCE_BACKEND,
        backends_where,
    )
    from crnet.runtime.bundle import Bundle

    options = options or {}
    precisions = Bundle.load(bundle, verify=False).precisions
    reference, cpu_build = REFERENCE_BACKEND, CPU_BUILD_BACKEND
    wanted = [(f"{reference} fp32", reference, "fp32"), (f"{cpu_build} fp32", cpu_build, "fp32")]
    if "int8" in precisions:
        wanted.append((f"{cpu_build} int8", cpu_build, "int8"))
        wanted += [(f"{name} int8", name, "int8")
                   for name in backends_where("optional_cpu_engine", installed=True)]
    segmenters, calls = [], {}
    for label, backend, precision in wanted:
        segmenter = Segmenter(bundle, backend=backend, precision=precision, threads=threads,
                              **options.get(backend, {}))
        segmenters.append(segmenter)
        calls[label] = segmenter_predictor(segmenter)
    deploy_parts = [calls[label] for label, backend, _ in wanted
                    if backend in (reference, cpu_build)]

    def deploy_episode(episode: Any) -> None:
        for predict in deploy_parts:
            predict(episode)

    calls[f"deploy ({reference} + {cpu_build} variants)"] = deploy_episode
    return calls, segmenters


def run_under_load(bundle: str | Path, *, threads: int | None = None,
                   episodes_per_round: int = 5, rounds: int = 8, fold: int = 0,
                   seed: int = 0, options: dict[str, dict[str, Any]] | None = None,
                   progress: bool = True) -> dict[str, Any]:
    """Quiet and loaded per-episode times of each path (module docstring)."""
    from crnet.data.synthetic import Synthetic5i

    threads = threads or os.cpu_count() or 1
    dataset = Synthetic5i(fold, split="test", seed=seed)
    episodes = list(dataset.episodes(episodes_per_round, shots=1))
    calls, segmenters = predictors(Path(bundle), threads, options)
    quiet: dict[str, list[float]] = {name: [] for name in calls}
    loaded: dict[str, list[float]] = {name: [] for name in calls}
    try:
        for predict in calls.values():
            episode_seconds(predict, episodes[:2])  # warm-up
        with cpu_hog() as hog:
            for round_index in range(rounds):
                for name, predict in calls.items():
                    with hog_paused(hog):
                        quiet[name] += episode_seconds(predict, episodes)
                    loaded[name] += episode_seconds(predict, episodes)
                if progress:
                    print(f"  round {round_index + 1}/{rounds} done", file=sys.stderr)
    finally:
        for segmenter in segmenters:
            segmenter.close()
    rows = []
    for name in calls:
        quiet_s, loaded_s = float(np.median(quiet[name])), float(np.median(loaded[name]))
        rows.append({"path": name, "quiet_s": quiet_s, "loaded_s": loaded_s,
                     "ratio": loaded_s / quiet_s,
                     "quiet_p90_s": float(np.percentile(quiet[name], 90)),
                     "loaded_p90_s": float(np.percentile(loaded[name], 90)),
                     "episodes": len(quiet[name])})
    return {"bundle": str(bundle), "threads": threads, "rounds": rounds,
            "episodes_per_round": episodes_per_round, "cpus": os.cpu_count(),
            "options": options or {}, "rows": rows, "target_ratio": LOAD_TARGET}


def format_under_load(report: dict[str, Any]) -> str:
    """The quiet / loaded table for the terminal (markdown)."""
    lines = [f"{report['threads']} thread(s) on {report['cpus']} cores; hog: one process "
             f"spinning on the last core; {report['rounds']} rounds x "
             f"{report['episodes_per_round']} episodes per path, quiet (hog paused) and "
             "loaded alternating", "",
             "| path | quiet s/episode | loaded s/episode | loaded / quiet |",
             "|---|---|---|---|"]
    for row in report["rows"]:
        verdict = "" if row["ratio"] <= report["target_ratio"] else " (over target)"
        lines.append(f"| {row['path']} | {row['quiet_s']:.4f} | {row['loaded_s']:.4f} | "
                     f"{row['ratio']:.2f}x{verdict} |")
    lines.append(f"target: loaded at most {report['target_ratio']}x quiet")
    return "\n".join(lines)
