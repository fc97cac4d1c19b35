"""Polygraphy commands for a variant that misses its gate, and Polygraphy's Comparator:
the ONNX Runtime side runs here for real; TensorRT steps need a GPU (tests/export/
test_tensorrt_suite.py)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from crnet.engines.polygraphy_debug import (
    compare_runners,
    gate_failure_hint,
    onnxrt_runner,
    polygraphy_commands,
    save_feeds,
)
from crnet.runtime.bundle import Bundle

pytest.importorskip("polygraphy", reason="pip install polygraphy (in the [test] extra)")


@pytest.fixture(scope="module")
def fp16_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from crnet.calibration.precision import quantize_bundle

    copy = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("poly") / "bundle"))
    quantize_bundle(copy, "fp16")
    return copy


def _feeds(bundle: Path, graph: str, count: int = 2) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    commands = polygraphy_commands(bundle, "fp32", graph)
    shapes = commands[0].argv[commands[0].argv.index("--input-shapes") + 1:]
    feeds = []
    for _ in range(count):
        feed = {}
        for spec in shapes:
            if spec.startswith("--"):
                break
            name, dims = spec.split(":")
            feed[name] = rng.random([int(d) for d in dims.strip("[]").split(",")],
                                    dtype=np.float32)
        feeds.append(feed)
    return feeds


def test_commands_spell_profile_tolerances_and_steps(fp16_bundle: Path) -> None:
    manifest = Bundle.load(fp16_bundle).manifest
    commands = polygraphy_commands(fp16_bundle, "fp16", "refine", work_dir="dbg")
    lines = [c.line for c in commands]
    assert len(commands) == 5
    assert "refine.fp32.onnx --onnxrt" in lines[0] and "--save-inputs dbg/refine-inputs.json" \
        in lines[0]
    assert all("refine.fp16.onnx" in line for line in lines[1:])
    assert "--trt --trt-min-shapes" in lines[1] and "--strongly-typed" in lines[1]
    top = manifest["shots"]["max"]
    assert f"support_feat:[{top}," in lines[1]  # the profile's max from the manifest
    for output in ("query_logits", "support_logits"):
        assert f"{output}:0.05" in lines[2]
    assert "--load-outputs dbg/refine-fp32-outputs.json" in lines[2]
    assert "--trt-outputs mark all" in lines[3] and "--onnx-outputs mark all" in lines[3]
    debug = commands[4].argv
    assert debug[:3] == ["polygraphy", "debug", "precision"] and "--fp16" in debug
    assert "--strongly-typed" not in debug[:debug.index("--check")]
    assert debug[debug.index("--check") + 1:debug.index("--check") + 4] == [
        "polygraphy", "run", "polygraphy_debug.engine"]
    assert len(polygraphy_commands(fp16_bundle, "fp32", "backbone")) == 4  # no debug step
    with pytest.raises(ValueError, match="graph"):
        polygraphy_commands(fp16_bundle, "fp16", "head")


def test_gate_failure_hint_names_both_graphs(fp16_bundle: Path) -> None:
    hint = gate_failure_hint(fp16_bundle, "fp16")
    assert "missed its accuracy gate" in hint
    assert "backbone.fp16.onnx" in hint and "refine.fp16.onnx" in hint
    assert "polygraphy debug precision" in hint


def _polygraphy(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "polygraphy"
    return subprocess.run([sys.executable, "-c",
                           "import sys; from polygraphy.tools import main; sys.exit(main())",
                           *argv[1:]], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_onnxrt_side_of_the_commands_runs(fp16_bundle: Path, tmp_path: Path) -> None:
    """The printed steps with ONNX Runtime in TensorRT's place, run for real."""
    commands = polygraphy_commands(fp16_bundle, "fp32", "refine", work_dir=tmp_path / "w",
                                   runner="onnxrt")
    for command in commands:
        result = _polygraphy(command.argv, tmp_path)
        assert result.returncode == 0, f"{command.line}\n{result.stdout[-3000:]}"
    assert (tmp_path / "w" / "refine-inputs.json").exists()
    assert (tmp_path / "w" / "refine-fp32-outputs.json").exists()


def test_saved_real_feeds_load_in_polygraphy(fp16_bundle: Path, tmp_path: Path) -> None:
    feeds = save_feeds(tmp_path / "feeds.json", _feeds(fp16_bundle, "backbone"))
    command = polygraphy_commands(fp16_bundle, "fp32", "backbone", work_dir=tmp_path / "w",
                                  runner="onnxrt", inputs=feeds)[0]
    assert "--load-inputs" in command.argv and "--save-inputs" not in command.argv
    result = _polygraphy(command.argv, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:]


def test_comparator_passes_equal_graphs_and_fails_a_perturbed_one(fp16_bundle: Path,
                                                                  tmp_path: Path) -> None:
    reference = fp16_bundle / "refine.fp32.onnx"
    model = onnx.load(str(reference))
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype == np.float32 and weights.ndim == 4:
            initializer.CopyFrom(numpy_helper.from_array(weights * 3.0 + 0.5, initializer.name))
            break
    perturbed = tmp_path / "refine.perturbed.onnx"
    onnx.save(model, str(perturbed))
    feeds = _feeds(fp16_bundle, "refine")
    tolerance = {"query_logits": 1e-4, "support_logits": 1e-4}
    same = compare_runners([onnxrt_runner(reference, "a"), onnxrt_runner(reference, "b")],
                           feeds, tolerance, tolerance)
    assert same.passed and max(same.max_abs_diff.values()) <= 1e-5
    differs = compare_runners([onnxrt_runner(reference, "fp32"),
                               onnxrt_runner(perturbed, "perturbed")], feeds, tolerance,
                              tolerance)
    assert not differs.passed and max(differs.max_abs_diff.values()) > 1e-3
    assert set(differs.max_abs_diff) == {"query_logits", "support_logits"}


def test_eval_prints_the_commands_for_a_failed_gate(fp16_bundle: Path) -> None:
    from crnet.evaluate import print_gate_hints

    printed: list[str] = []
    records = [{"precision": "fp32", "passed": True}, {"precision": "fp16", "passed": False},
               {"precision": "int8", "passed": None}]
    assert print_gate_hints(records, fp16_bundle, printed.append) == ["fp16"]
    assert len(printed) == 1 and "polygraphy run" in printed[0]
    assert "refine.fp16.onnx" in printed[0]
    assert print_gate_hints(records[:1], fp16_bundle, printed.append) == []
