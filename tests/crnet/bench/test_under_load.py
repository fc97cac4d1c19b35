from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crnet.bench.under_load import cpu_hog, format_under_load
from crnet.cli import main
from tests.runtime.bundles import export_tiny_bundle

pytestmark = pytest.mark.openvino  # run in their own process: tests/test_openvino_isolated.py


def test_cpu_hog_runs_inside_the_block_and_stops_after() -> None:
    with cpu_hog() as hog:
        assert hog.poll() is None
        if hasattr(os, "sched_getaffinity"):
            assert os.sched_getaffinity(hog.pid) == {max(os.sched_getaffinity(0))}
    assert hog.returncode is not None


def test_under_load_prints_quiet_and_loaded(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    bundle = export_tiny_bundle(tmp_path / "bundle")
    out = tmp_path / "load.json"
    code = main(["bench", str(bundle), "--under-load", "--episodes-per-round", "2", "--rounds", "1",
                 "--threads", "1", "--no-progress", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    paths = {row["path"] for row in report["rows"]}
    assert {"torch fp32", "onnxruntime fp32", "deploy (torch + onnxruntime variants)"} <= paths
    for row in report["rows"]:
        assert row["episodes"] == 2 and row["quiet_s"] > 0 and row["loaded_s"] > 0
        assert row["ratio"] == pytest.approx(row["loaded_s"] / row["quiet_s"])
    assert "| onnxruntime fp32 |" in capsys.readouterr().out


def test_format_flags_rows_over_the_target() -> None:
    report = {"threads": 2, "cpus": 2, "rounds": 1, "episodes_per_round": 1,
              "target_ratio": 2.5,
              "rows": [{"path": "a", "quiet_s": 0.1, "loaded_s": 0.2, "ratio": 2.0},
                       {"path": "b", "quiet_s": 0.1, "loaded_s": 0.9, "ratio": 9.0}]}
    text = format_under_load(report)
    assert "| a | 0.1000 | 0.2000 | 2.00x |" in text
    assert "| b | 0.1000 | 0.9000 | 9.00x (over target) |" in text


def test_crnet_sets_a_passive_openmp_wait_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.cli import main as crnet_main

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert crnet_main(["info"]) == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    crnet_main(["info"])
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's setting wins
