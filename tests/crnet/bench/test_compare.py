from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from crnet.bench.compare import cpu_paths, format_compare, summarize
from crnet.runtime.backends.base import backend_class
from tests.runtime.bundles import export_tiny_bundle


@pytest.fixture(scope="module")
def compare_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("compare") / "bundle")


def test_cpu_paths_follow_what_is_installed_and_the_bundle() -> None:
    labels = [path.label for path in cpu_paths(["fp32"])]
    assert "onnxruntime fp32" in labels and "onnxruntime int8" not in labels
    openvino = backend_class("openvino")
    if openvino.is_available()[0]:
        assert "openvino fp32 (f32)" in labels
        assert ("openvino fp32 (bf16)" in labels) == openvino.supports_bf16()
    else:
        assert not any(label.startswith("openvino") for label in labels)


def test_compare_times_every_path_twice_and_torch(compare_bundle: Path, tmp_path: Path
                                                  ) -> None:
    # In its own process: OpenVINO (bf16 paths) and torch training later in the same
    # pytest process segfaulted (tests/test_openvino_isolated.py).
    out = tmp_path / "compare.json"
    result = subprocess.run(
        [sys.executable, "-m", "crnet", "bench", str(compare_bundle), "--compare",
         "--iterations", "3", "--warmup", "1", "--threads", "1", "--no-progress", "--json",
         str(out)], capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3],
        timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())
    paths = {row["path"] for row in report["rows"]}
    expected = {path.label for path in cpu_paths(["fp32"])}
    assert paths == expected | {"torch full forward"}
    for row in report["rows"]:
        assert row["latency_ms"]["count"] == 3 and row["queries_per_s"] > 0
        assert row["gflops"] > 0 and row["fraction_of_peak"] > 0
    timed = {(row["path"], row["timed"]) for row in report["rows"]}
    assert {(path, "segment") for path in expected} <= timed
    assert {(path, "raw") for path in expected} <= timed
    assert set(report["summary"]) == expected
    printed = result.stdout
    assert "| onnxruntime fp32 | segment |" in printed and "sgemm peak" in printed


def test_summary_ratios() -> None:
    def row(path: str, timed: str, ms: float) -> dict:
        return {"path": path, "timed": timed, "latency_ms": {"p50": ms}}

    summary = summarize([row("a", "raw", 2.0), row("a", "segment", 2.5),
                         row("torch full forward", "raw", 20.0)])
    assert summary["a"]["segment_over_raw"] == pytest.approx(1.25)
    assert summary["a"]["speedup_vs_torch"] == pytest.approx(8.0)


def test_the_table_warns_when_torch_ran_with_passive_openmp_threads() -> None:
    report = {"threads": 2, "shots": 1, "iterations": 3, "cpu_flags": {"avx2": True},
              "matmul_peak_gflops": 100.0, "omp_wait_policy": "PASSIVE", "summary": {},
              "rows": [{"path": "torch full forward", "timed": "raw", "queries_per_s": 50.0,
                        "latency_ms": {"p50": 20.0, "p90": 21.0}}]}
    assert "OMP_WAIT_POLICY=PASSIVE" in format_compare(report)
    assert "OMP_WAIT_POLICY" not in format_compare({**report, "threads": 1})
    assert "OMP_WAIT_POLICY" not in format_compare({**report, "omp_wait_policy": "ACTIVE"})
