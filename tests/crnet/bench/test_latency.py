from __future__ import annotations

import json
from pathlib import Path

import pytest

from crnet.bench.latency import percentiles, runs_query_branch_only
from crnet.cli import main as crnet_main
from tests.runtime.bundles import export_tiny_bundle


@pytest.fixture(scope="module")
def bench_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_bundle(tmp_path_factory.mktemp("bench") / "bundle")


def test_bench_writes_valid_json(bench_bundle: Path, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    code = crnet_main(["bench", str(bench_bundle), "--backend", "onnxruntime",
                       "--precision", "fp32", "--json", str(out), "--iterations", "4",
                       "--warmup", "1", "--threads", "1", "--soak", "20", "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["backend"] == "onnxruntime" and report["threads"] == 1
    for key in ("p50", "p90", "p99"):
        assert report["latency_ms"][key] > 0
    assert report["support_encode_ms"]["p50"] > 0 and report["throughput_qps"] > 0
    assert report["peak_rss_mb"] > 0 and report["matmul_peak_gflops"] > 0
    assert report["flops"]["per_query"] > 0 and report["achieved_gflops"] > 0
    flops = report["flops"]
    assert flops["source"] == "manifest"  # written by the export
    assert flops["per_query"] == flops["encode"] + flops["refine_query"]
    assert flops["refine_query"] < flops["refine"]
    assert flops["forward"] == 2 * flops["encode"] + flops["refine"]
    assert set(report["stages_ms"]) == {"preprocess", "inference", "postprocess", "backbone",
                                        "refine"}
    assert all(stage["p50"] > 0 and stage["count"] == 4 for stage in report["stages_ms"].values())
    assert report["torch_achieved_gflops"] > 0
    assert report["speedup_vs_torch"] > 0 and report["torch_forward_ms"]["count"] == 4
    assert report["soak"]["calls"] == 20 and "growth_mb" in report["soak"]
    printed = capsys.readouterr().out
    assert "faster per query" in printed and "soak" in printed and "stages p50" in printed


def test_bench_without_torch_comparison_and_errors(bench_bundle: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert crnet_main(["bench", str(bench_bundle), "--backend", "onnxruntime",
                       "--iterations", "2", "--warmup", "0", "--threads", "1",
                       "--no-compare-torch", "--json", str(out), "--no-progress"]) == 0
    assert "speedup_vs_torch" not in json.loads(out.read_text())
    assert crnet_main(["bench", str(bench_bundle), "--precision", "int8", "--no-progress"]) == 1
    assert "crnet quantize" in capsys.readouterr().err
    assert crnet_main(["bench", str(bench_bundle), "--iterations", "0"]) == 2
    assert "--iterations must be >= 1" in capsys.readouterr().err


def test_bench_times_generated_frames_where_synthetic_cannot_be_drawn(
        bench_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crnet.bench.timing as timing
    from crnet.bench.latency import BenchOptions, format_report, run_bench

    options = BenchOptions(backend="onnxruntime", iterations=2, warmup=0, threads=1,
                           compare_torch=False, progress=False)
    assert run_bench(bench_bundle, options)["episodes"]["dataset"] == "synthetic-5i"
    monkeypatch.setattr(timing, "synthetic_available", lambda: False)  # as without skimage
    report = run_bench(bench_bundle, options)
    assert report["episodes"]["dataset"] == "generated"
    assert report["query_size"] == list(timing.GENERATED_SIZE)
    assert "inputs           numpy-generated frames" in format_report(report)


def test_bench_prints_queries_per_second_for_each_batch_size(
        bench_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert crnet_main(["bench", str(bench_bundle), "--backend", "onnxruntime",
                       "--iterations", "8", "--warmup", "0", "--threads", "1",
                       "--no-compare-torch", "--batch", "1,4,8", "--json", str(out),
                       "--no-progress"]) == 0
    rows = json.loads(out.read_text())["batches"]
    assert [row["batch"] for row in rows] == [1, 4, 8]
    assert [row["calls"] for row in rows] == [8, 2, 1]
    assert all(row["queries_per_s"] > 0 and row["call_ms"]["p50"] > 0 for row in rows)
    printed = capsys.readouterr().out
    assert all(f"batch {size:<3}" in printed for size in (1, 4, 8))
    assert crnet_main(["bench", str(bench_bundle), "--batch", "4,x"]) == 2
    assert crnet_main(["bench", str(bench_bundle), "--batch", "0"]) == 2
    assert "batch sizes must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize(("values", "message"), [
    ({"iterations": 0}, "iterations must be at least 1"),
    ({"batch_sizes": (4, 0)}, "batch size must be at least 1"),
    ({"warmup": -1}, "warmup must be at least 0"),
    ({"threads": 0}, "threads must be at least 1"),
    ({"precision": "int4"}, "precision must be one of"),
])
def test_bench_options_refuse_bad_values(values: dict, message: str) -> None:
    from crnet.bench.latency import BenchOptions
    from crnet.runtime.errors import UsageError

    with pytest.raises(UsageError, match=message):
        BenchOptions(**values)


def test_percentiles() -> None:
    stats = percentiles([0.001, 0.002, 0.003, 0.004])
    assert stats["p50"] == pytest.approx(2.5) and stats["min"] == pytest.approx(1.0)


def test_which_backends_run_the_query_branch_alone() -> None:
    assert runs_query_branch_only({"backend": "torch"})
    assert runs_query_branch_only({"backend": "onnxruntime",
                                   "query_refine": {"pruned": True, "chained": "yes"}})
    assert not runs_query_branch_only({"backend": "onnxruntime",
                                       "query_refine": {"pruned": False, "reason": "TensorRT EP"}})
    assert not runs_query_branch_only({"backend": "tensorrt"})
    assert runs_query_branch_only({"backend": "openvino", "query_graph": {"fused": True}})
    assert not runs_query_branch_only({"backend": "not-registered"})
