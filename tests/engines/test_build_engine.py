"""`crnet build` without a GPU: trtexec-style parsing, --print-trtexec, the no-TensorRT
path, the ONNX Runtime CPU build of a real tiny bundle, and atomic plan writes."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from crnet.cli import main as crnet_main
from crnet.cli.commands.build import EXIT_NO_TENSORRT
from crnet.engines.build_engine import bundle_profile
from crnet.engines.build_settings import (
    BuildSettings,
    SpecError,
    format_bytes,
    format_shapes,
    parse_mem_pool,
    parse_shapes,
    trtexec_command,
)
from crnet.engines.engine_trt import silent_fp32_warning, summarize_layers
from crnet.runtime.bundle import Bundle
from crnet.runtime.layout import engine_paths
from crnet.runtime.ort_build import ort_build_path

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
no_tensorrt = pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed here")


# ---------------------------------------------------------------- shapes and memory pools


def test_parse_shapes_trtexec_syntax() -> None:
    assert parse_shapes("image:1x3x193x193,other:2x16") == {
        "image": (1, 3, 193, 193), "other": (2, 16)}
    assert parse_shapes("'input:0':1x3,s:scalar,t:") == {"input:0": (1, 3), "s": (), "t": ()}
    shapes = {"support_feat": (8, 64, 25, 25), "support_mask": (8, 1, 25, 25)}
    assert parse_shapes(format_shapes(shapes)) == shapes


@pytest.mark.parametrize(("spec", "words"), [
    ("image1x3x193", "no ':'"),
    ("image:1x3xa", "'a'"),
    ("image:1x-3", "'-3'"),
    ("image:1,,other:2", "empty entry"),
    (":1x3", "no tensor name"),
    ("image:1,image:2", "twice"),
    ("'image:1x3", "unbalanced"),
    ("", "empty"),
])
def test_parse_shapes_errors_say_what_and_expected(spec: str, words: str) -> None:
    with pytest.raises(SpecError) as error:
        parse_shapes(spec, "--optShapes")
    message = str(error.value)
    assert words in message and "--optShapes" in message
    if spec:
        assert "expected" in message


def test_parse_mem_pool_units() -> None:
    assert parse_mem_pool("workspace:1024M") == {"workspace": 1 << 30}
    assert parse_mem_pool("workspace:2G,dlaSRAM:0.5M,tacticSharedMem:48K") == {
        "workspace": 2 << 30, "dlaSRAM": 1 << 19, "tacticSharedMem": 48 << 10}
    assert parse_mem_pool("workspace:512") == {"workspace": 512 << 20}  # no suffix: MiB
    assert parse_mem_pool("workspace:100B") == {"workspace": 100}
    assert [format_bytes(n) for n in (1 << 30, 3 << 20, 1536, 7)] == ["1G", "3M", "1536B", "7B"]


@pytest.mark.parametrize(("spec", "words"), [
    ("workspace=1G", "no ':'"), ("scratch:1G", "unknown pool 'scratch'"),
    ("workspace:1T", "not a number"), ("workspace:", "not a number"), ("", "empty"),
])
def test_parse_mem_pool_errors(spec: str, words: str) -> None:
    with pytest.raises(SpecError, match="expected|empty") as error:
        parse_mem_pool(spec)
    assert words in str(error.value)


def test_profile_rules() -> None:
    opt = {"x": (1, 3)}
    only_opt = BuildSettings(Path("m.onnx"), Path("m.plan"), opt_shapes=opt)
    assert only_opt.profile() == {"x": {"min": [1, 3], "opt": [1, 3], "max": [1, 3]}}
    with pytest.raises(SpecError, match="min <= opt <= max"):
        BuildSettings(Path("m.onnx"), Path("m.plan"), min_shapes={"x": (2, 3)}, opt_shapes=opt,
                      max_shapes={"x": (4, 3)}).profile()
    with pytest.raises(SpecError, match="every tensor needs all three"):
        BuildSettings(Path("m.onnx"), Path("m.plan"), min_shapes={"y": (1, 3)}, opt_shapes=opt,
                      max_shapes={"x": (4, 3)}).profile()


def main(argv: list[str]) -> int:
    """`crnet build ARGV` under the command's exit-code policy."""
    return crnet_main(["build", *argv])


def test_bad_spec_on_the_command_line_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    assert main(["--onnx", "m.onnx", "--optShapes", "x:1xq", "--print-trtexec"]) == 2
    assert "'q'" in capsys.readouterr().err


# ---------------------------------------------------------------- trtexec equivalents


def test_print_trtexec_single(capsys: pytest.CaptureFixture) -> None:
    code = main(["--onnx", "refine.fp16.onnx", "--saveEngine", "refine.fp16.plan",
                 "--minShapes", "support_feat:1x64x25x25", "--optShapes",
                 "support_feat:2x64x25x25", "--maxShapes", "support_feat:8x64x25x25",
                 "--memPoolSize", "workspace:1024M", "--timingCacheFile", "t.cache",
                 "--builderOptimizationLevel", "5", "--versionCompatible",
                 "--hardwareCompatibilityLevel", "ampere+", "--stripWeights", "--print-trtexec"])
    assert code == 0
    line = capsys.readouterr().out.strip()
    assert line.split() == [
        "trtexec", "--onnx=refine.fp16.onnx", "--saveEngine=refine.fp16.plan",
        "--stronglyTyped", "--skipInference", "--profilingVerbosity=detailed",
        "--minShapes=support_feat:1x64x25x25", "--optShapes=support_feat:2x64x25x25",
        "--maxShapes=support_feat:8x64x25x25", "--timingCacheFile=t.cache",
        "--memPoolSize=workspace:1G", "--builderOptimizationLevel=5", "--versionCompatible",
        "--hardwareCompatibilityLevel=ampere+", "--stripWeights"]
    assert "--fp16" not in line and "--int8" not in line  # precision lives in the ONNX


def test_print_trtexec_bundle_uses_manifest_shapes(tiny_bundle: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    assert main(["--bundle", str(tiny_bundle), "--print-trtexec"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    height, width = manifest["input_size"]
    feat_h, feat_w = manifest["feature_size"]
    channels, max_shots = manifest["feature_channels"], manifest["shots"]["max"]
    backbone, refine = lines
    plan, _ = engine_paths(tiny_bundle, "backbone", "fp32")
    assert f"--saveEngine={plan}" in backbone.split()
    assert f"--maxShapes=image:{max_shots}x3x{height}x{width}" in backbone.split()
    assert f"--optShapes=image:1x3x{height}x{width}" in backbone.split()
    assert (f"--maxShapes=query_feat:1x{channels}x{feat_h}x{feat_w},support_feat:{max_shots}x"
            f"{channels}x{feat_h}x{feat_w},support_mask:{max_shots}x1x{feat_h}x{feat_w}"
            in refine.split())
    assert not (tiny_bundle / "engines").exists()  # printing builds nothing


def test_bundle_profile_and_paths() -> None:
    manifest = {"input_size": [65, 65], "feature_size": [9, 9], "feature_channels": 16,
                "shots": {"min": 1, "max": 5}}
    low, opt, high = bundle_profile(manifest, "refine")
    assert low == opt and high["support_feat"] == (5, 16, 9, 9)
    assert high["query_feat"] == (1, 16, 9, 9)
    plan, meta = engine_paths("b", "refine", "int8")
    assert (plan.name, meta.name) == ("refine.int8.plan", "refine.int8.json")
    command = trtexec_command(BuildSettings(Path("a.onnx"), plan))
    assert "--minShapes" not in " ".join(command)


# ---------------------------------------------------------------- without TensorRT


@no_tensorrt
def test_single_build_without_tensorrt_names_what_to_install(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"not used")
    code = main(["--onnx", str(onnx_path), "--saveEngine", str(tmp_path / "m.plan")])
    assert code == EXIT_NO_TENSORRT
    message = capsys.readouterr().err
    assert "TensorRT is not installed" in message
    assert "pip install tensorrt-cu12" in message and "python3-libnvinfer" in message
    assert "lean" in message and "cannot build" in message
    assert not (tmp_path / "m.plan").exists()


@no_tensorrt
def test_bundle_target_tensorrt_without_tensorrt_fails(tiny_bundle: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    assert main([str(tiny_bundle), "--target", "tensorrt"]) == EXIT_NO_TENSORRT
    assert "TensorRT is not installed" in capsys.readouterr().err
    assert not (tiny_bundle / "engines").exists()


# ---------------------------------------------------------------- ONNX Runtime CPU build


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny bundle (builds change its manifest)."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def _run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("level", ["extended", "all"])
def test_ort_cpu_build_of_a_bundle(bundle_copy: Path, level: str,
                                   capsys: pytest.CaptureFixture) -> None:
    args = [str(bundle_copy), "--ort-level", level, "--ort-threads", "1"]
    if not HAS_TENSORRT:
        args += ["--target", "auto"]  # the fallback itself
    else:
        args += ["--target", "ort"]
    assert main(args) == 0
    captured = capsys.readouterr()
    if not HAS_TENSORRT:
        assert "falling back to the CPU target" in captured.err
    bundle = Bundle.load(bundle_copy, verify=True)  # every hash, new files included
    builds = bundle.manifest["ort_builds"]["fp32"]
    manifest = bundle.manifest
    rng = np.random.default_rng(0)
    height, width = manifest["input_size"]
    feat_h, feat_w = manifest["feature_size"]
    channels = manifest["feature_channels"]
    feeds = {
        "backbone": {"image": rng.standard_normal((2, 3, height, width), dtype=np.float32)},
        "refine": {
            "query_feat": rng.standard_normal((1, channels, feat_h, feat_w), dtype=np.float32),
            "support_feat": rng.standard_normal((3, channels, feat_h, feat_w), dtype=np.float32),
            "support_mask": (rng.random((3, 1, feat_h, feat_w)) > 0.5).astype(np.float32)},
    }
    for graph in ("backbone", "refine"):
        entry = builds[graph]
        expected_level = {"extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}[level]
        assert entry["session_options"] == {"graph_optimization_level": expected_level,
                                            "intra_op_num_threads": 1}
        assert entry["cpu_specific"] is (level == "all")
        assert entry["path"] in manifest["files"]
        assert entry["source_sha256"] == manifest["files"][f"{graph}.fp32.onnx"]
        optimised = ort_build_path(bundle, graph, "fp32")
        assert optimised == bundle_copy / entry["path"]
        original = _run(bundle.graph_path(graph, "fp32"), feeds[graph])
        rebuilt = _run(optimised, feeds[graph])
        for reference, candidate in zip(original, rebuilt, strict=True):
            np.testing.assert_allclose(candidate, reference, rtol=1e-4, atol=1e-5)
    assert not list(bundle_copy.rglob("*.tmp"))


def test_ort_build_path_refuses_stale_or_foreign_builds(bundle_copy: Path) -> None:
    from crnet.engines.engine_ort import build_ort_bundle

    build_ort_bundle(bundle_copy, "fp32", threads=1, log=lambda _: None)
    bundle = Bundle.load(bundle_copy)
    assert ort_build_path(bundle, "refine", "fp16") is None  # never built
    assert ort_build_path(bundle, "refine", "fp32", execution_provider="CUDAExecutionProvider") \
        is None
    assert ort_build_path(bundle, "refine", "fp32", onnxruntime_version="0.1.0") is None
    entry = bundle.manifest["ort_builds"]["fp32"]["refine"]
    assert ort_build_path(bundle, "refine", "fp32",
                          onnxruntime_version=entry["onnxruntime_version"]) is not None
    stale = Bundle(bundle.root, json.loads(json.dumps(bundle.manifest)))
    stale.manifest["files"]["refine.fp32.onnx"] = "0" * 64  # the ONNX changed since the build
    assert ort_build_path(stale, "refine", "fp32") is None
    (bundle_copy / entry["path"]).unlink()
    assert ort_build_path(bundle, "refine", "fp32") is None


# ---------------------------------------------------------------- atomic writes, layer summary


def test_plan_write_is_atomic(tmp_path: Path) -> None:
    from crnet.engines.engine_trt import _write_plan

    class BrokenPlan:
        """A serialized plan whose bytes fail half-way (the buffer protocol is not there)."""

    plan = tmp_path / "engines" / "refine.fp32.plan"
    settings = BuildSettings(tmp_path / "refine.fp32.onnx", plan)
    with pytest.raises(TypeError):
        _write_plan(BrokenPlan(), settings)
    assert not plan.exists() and not list(plan.parent.iterdir())  # no plan, no temporary
    _write_plan(b"\x01" * 1024, settings)
    plan_bytes_before = plan.read_bytes()
    with pytest.raises(TypeError):
        _write_plan(BrokenPlan(), settings)
    assert plan.read_bytes() == plan_bytes_before  # the old plan survives a failed rewrite
    assert [p.name for p in plan.parent.iterdir()] == [plan.name]


def test_layer_precision_summary() -> None:
    def layer(*formats: str) -> dict[str, object]:
        return {"Name": "l", "Inputs": [{"Format/Datatype": f} for f in formats[:-1]],
                "Outputs": [{"Format/Datatype": formats[-1]}]}

    information = {"Layers": [
        layer("Row major linear FP32", "Row major linear FP32"),
        layer("Channel major FP16 format where channel % 8 == 0", "Half"),
        layer("Row major linear FP32", "Row major linear FP16 format"),  # a cast: fp16
        layer("Channel major INT8 format where channel % 32 == 0", "Float"),
        layer("Row major linear Int32", "Row major linear Int32"),
        layer("Float", "Float"),
    ]}
    counts = summarize_layers(information)
    assert counts == {"fp16": 2, "fp32": 2, "int8": 1, "other": 1}
    assert silent_fp32_warning("fp16", counts) is None
    assert silent_fp32_warning("fp32", {"fp32": 10}) is None
    warning = silent_fp32_warning("int8", {"fp32": 40, "other": 3})
    assert warning is not None and "40 of 40 layers in fp32" in warning


def test_segmenter_loads_the_cpu_build(bundle_copy: Path) -> None:
    from crnet.data.synthetic import Synthetic5i
    from crnet.engines.engine_ort import build_ort_bundle
    from crnet.runtime import Segmenter

    episode = Synthetic5i(0, split="test", seed=0).episode(0)
    plain = Segmenter(bundle_copy, backend="onnxruntime", threads=1)
    plain.set_support(list(episode.support_images), list(episode.support_masks))
    expected = plain.segment(episode.query_image, return_prob=True)[1]
    build_ort_bundle(bundle_copy, "fp32", threads=1, log=lambda _: None)
    built = Segmenter(bundle_copy, backend="onnxruntime", threads=1)
    built.set_support(list(episode.support_images), list(episode.support_masks))
    probability = built.segment(episode.query_image, return_prob=True)[1]
    loaded = built.describe()
    assert "engines/ort/" in json.dumps(loaded, default=str)
    np.testing.assert_allclose(probability, expected, atol=1e-5)
