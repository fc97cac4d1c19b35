"""`crnet bench` in the plain install (the wheel, no extras: no torch, no scikit-image).

Runs the command in the shared plain-install venv (tests/venvs.py) on a tiny bundle and
checks its table and JSON: the inputs are numpy-generated frames there, and asking for the
torch comparison is a one-line error naming the export extra.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from crnet.bench.timing import GENERATED_SIZE, generated_frames
from tests.venvs import plain_venv as shared_plain_venv
from tests.venvs import run, tiny_bundle


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path) -> Path:
    return shared_plain_venv(tmp_path_factory, crnet_wheel)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory)


def test_bench_runs_in_the_plain_install(plain_venv: Path, bundle: Path,
                                         tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = run([str(plain_venv / "crnet"), "bench", str(bundle), "--iterations", "3",
                  "--warmup", "1", "--threads", "1", "--soak", "20", "--no-progress",
                  "--json", str(out)], cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["backend"] == "onnxruntime" and "speedup_vs_torch" not in report
    assert report["episodes"]["dataset"] == "generated"
    assert report["query_size"] == list(GENERATED_SIZE)
    assert report["latency_ms"]["count"] == 3 and report["latency_ms"]["p50"] > 0
    assert report["throughput_qps"] > 0 and report["peak_rss_mb"] > 0
    assert report["flops"]["source"] == "manifest" and report["soak"]["calls"] == 20
    table = result.stdout
    for line in ("segment latency", "throughput", "stages p50", "support encode",
                 "inputs           numpy-generated frames", "peak resident", "compute",
                 "soak"):
        assert line in table, table

    refused = run([str(plain_venv / "crnet"), "bench", str(bundle), "--compare-torch",
                   "--no-progress"], cwd=tmp_path, timeout=300)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        "crnet bench: error: --compare-torch needs torch, which is not installed; install "
        "the export extra: pip install 'crnet-deploy[export]'"]


def test_generated_frames_are_seeded_and_masked() -> None:
    images, masks, queries = generated_frames(2, 3, seed=4)
    again, _, _ = generated_frames(2, 3, seed=4)
    other, _, _ = generated_frames(2, 3, seed=5)
    assert len(images) == len(masks) == 2 and len(queries) == 3
    assert all(image.shape == (*GENERATED_SIZE, 3) and image.dtype == np.uint8
               for image in images + queries)
    assert np.array_equal(images[0], again[0]) and not np.array_equal(images[0], other[0])
    for mask in masks:
        assert set(np.unique(mask).tolist()) == {0, 1}
        assert 0.05 < mask.mean() < 0.5
