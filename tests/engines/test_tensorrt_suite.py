"""The GPU suite of `crnet build`: run it where TensorRT and an NVIDIA GPU are.

    pytest -m tensorrt tests/engines/test_tensorrt_suite.py
    CRNET_TRT_BUNDLE=bundle/ pytest -m tensorrt tests/engines/test_tensorrt_suite.py

Builds every variant of a bundle (a copy of $CRNET_TRT_BUNDLE, else the tiny exported one),
then compares TensorRT with ONNX Runtime (CPU) on the same ONNX variant: per output, with
tolerances per precision, and by mIoU on synthetic-5i episodes; and runs
``runtime.Segmenter(bundle, backend="tensorrt")`` end to end. Skipped, with the reason,
where tensorrt does not import.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tensorrt
trt = pytest.importorskip(
    "tensorrt", reason="tensorrt does not import: the TensorRT suite needs TensorRT 10/11 "
                       "(pip install tensorrt-cu12 cuda-python) and an NVIDIA GPU")

from crnet.data.synthetic import Synthetic5i  # noqa: E402
from crnet.engines.build_engine import build_bundle  # noqa: E402
from crnet.runtime.bundle import GRAPHS, PRECISIONS, Bundle  # noqa: E402
from crnet.runtime.layout import engine_paths  # noqa: E402
from crnet.runtime.metrics import FewShotMeter  # noqa: E402
from tests.engines.trt_suite_bundle import copy_without_engines  # noqa: E402

# max |TensorRT - ONNX Runtime| per output, relative to the output's largest magnitude (>= 1)
OUTPUT_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2, "int8": 2.5e-1}  # fp32 allows TF32
MIOU_TOLERANCE = {"fp32": 0.5, "fp16": 1.0, "int8": 2.0}  # |delta mIoU|, percent points
EPISODES, SHOT_CYCLE = 8, (1, 3)


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
               ) -> Path:
    """A private copy of $CRNET_TRT_BUNDLE (or of the tiny exported bundle, with fp16 and
    int8 variants added by `crnet quantize`), engines of every variant built."""
    source = os.environ.get("CRNET_TRT_BUNDLE")
    source_path = Path(source) if source else request.getfixturevalue("tiny_bundle")
    copy = copy_without_engines(source_path, tmp_path_factory.mktemp("trt") / "bundle")
    if not source:
        from crnet.calibration.precision import quantize_bundle

        for precision in ("fp16", "int8"):
            quantize_bundle(copy, precision)
    build_bundle(copy, "all", log=print)
    return copy


def _precision_or_skip(bundle_root: Path, precision: str) -> Bundle:
    bundle = Bundle.load(bundle_root)
    if precision not in bundle.precisions:
        pytest.skip(f"the bundle has no {precision} variant (run `crnet quantize`, or point "
                    "CRNET_TRT_BUNDLE at a bundle that has it)")
    return bundle


def test_every_variant_builds_with_engine_json(trt_bundle: Path) -> None:
    bundle = Bundle.load(trt_bundle, verify=True)  # plans and JSONs hashed into files
    for precision in bundle.precisions:
        for graph in GRAPHS:
            plan, meta = engine_paths(trt_bundle, graph, precision)
            assert plan.stat().st_size > 0
            info = json.loads(meta.read_text())
            assert info["tensorrt_version"] == trt.__version__
            major, minor = info["compute_capability"].split(".")
            assert major.isdigit() and minor.isdigit() and info["gpu_name"]
            assert info["onnx_sha256"] == bundle.manifest["files"][f"{graph}.{precision}.onnx"]
            assert info["profiles"] and info["builder"]["strongly_typed"]
            counts = info["layer_precisions"]
            assert counts and sum(counts.values()) > 0
            if precision in ("fp16", "int8"):
                assert counts.get(precision, 0) > 0, f"{graph} {precision} built as {counts}"
            entry = bundle.manifest["engines"][precision][graph]
            assert entry["plan"] == str(plan.relative_to(trt_bundle))
    assert (trt_bundle / "engines" / "timing.cache").stat().st_size > 0


def _feeds(manifest: dict, shots: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    height, width = manifest["input_size"]
    feat_h, feat_w = manifest["feature_size"]
    channels = manifest["feature_channels"]
    return {
        "backbone": {"image": rng.standard_normal((shots + 1, 3, height, width),
                                                  dtype=np.float32)},
        "refine": {
            "query_feat": rng.standard_normal((1, channels, feat_h, feat_w), dtype=np.float32),
            "support_feat": rng.standard_normal((shots, channels, feat_h, feat_w),
                                                dtype=np.float32),
            "support_mask": (rng.random((shots, 1, feat_h, feat_w)) > 0.5).astype(np.float32)},
    }


@pytest.mark.parametrize("precision", PRECISIONS)
def test_outputs_match_onnxruntime(trt_bundle: Path, precision: str) -> None:
    from crnet.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
    from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

    bundle = _precision_or_skip(trt_bundle, precision)
    max_shots = int(bundle.manifest["shots"]["max"])
    tolerance = OUTPUT_TOLERANCE[precision]
    with TensorRTBackend(bundle, precision) as tensorrt, \
            OnnxRuntimeBackend(bundle, precision, providers=["CPUExecutionProvider"]) as ort:
        for shots in sorted({1, max_shots - 1 or 1}):
            feeds = _feeds(bundle.manifest, shots, seed=shots)
            pairs = {"feat": (ort.run_backbone(feeds["backbone"]["image"]),
                              tensorrt.run_backbone(feeds["backbone"]["image"]))}
            reference = ort.run_refine(**feeds["refine"])
            candidate = tensorrt.run_refine(**feeds["refine"])
            pairs["query_logits"] = (reference[0], candidate[0])
            pairs["support_logits"] = (reference[1], candidate[1])
            for name, (expected, actual) in pairs.items():
                assert actual.shape == expected.shape, name
                assert np.isfinite(actual).all(), f"{name} has non-finite values"
                scale = max(1.0, float(np.abs(expected).max()))
                difference = float(np.abs(actual.astype(np.float32) - expected).max())
                assert difference <= tolerance * scale, (
                    f"{precision} {name} at K={shots}: max |TensorRT - ORT| {difference:.3e} > "
                    f"{tolerance} x {scale:.3g}")


@pytest.mark.parametrize("precision", PRECISIONS)
def test_polygraphy_comparator_tensorrt_vs_onnxruntime(trt_bundle: Path, precision: str
                                                      ) -> None:
    """The same comparison through Polygraphy's Comparator (TrtRunner on our plan,
    OnnxrtRunner on the same ONNX variant), per-output tolerances scaled by the output's
    ONNX Runtime magnitude."""
    pytest.importorskip("polygraphy", reason="pip install polygraphy")
    from crnet.engines.polygraphy_debug import compare_runners, onnxrt_runner, trt_runner
    from crnet.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle = _precision_or_skip(trt_bundle, precision)
    feeds = _feeds(bundle.manifest, 1, seed=7)
    with OnnxRuntimeBackend(bundle, precision, providers=["CPUExecutionProvider"]) as ort:
        scale = {"feat": float(np.abs(ort.run_backbone(feeds["backbone"]["image"])).max()),
                 **dict(zip(("query_logits", "support_logits"),
                            (float(np.abs(a).max()) for a in ort.run_refine(**feeds["refine"])),
                            strict=True))}
    for graph in GRAPHS:
        plan, _ = engine_paths(trt_bundle, graph, precision)
        outputs = [spec["name"] for spec in bundle.io(graph)["outputs"]]
        atol = {name: OUTPUT_TOLERANCE[precision] * max(1.0, scale[name]) for name in outputs}
        result = compare_runners([trt_runner(plan, f"trt-{graph}"),
                                  onnxrt_runner(bundle.graph_path(graph, precision),
                                                f"ort-{graph}")],
                                 [feeds[graph]], atol, {name: 0.0 for name in outputs})
        assert result.passed, f"{graph} {precision}: max |diff| {result.max_abs_diff}"


def _miou(bundle_root: Path, backend: str, precision: str, **options: object) -> float:
    from crnet.runtime import Segmenter

    meter = FewShotMeter()
    dataset = Synthetic5i(0, split="test", seed=0)
    with Segmenter(bundle_root, backend=backend, precision=precision, **options) as segmenter:
        for index in range(EPISODES):
            episode = dataset.episode(index, SHOT_CYCLE[index % len(SHOT_CYCLE)])
            segmenter.set_support(list(episode.support_images),
                                  [mask == 1 for mask in episode.support_masks])
            meter.update(episode.class_id, segmenter.segment(episode.query_image),
                         episode.query_mask)
    return float(meter.miou())


@pytest.mark.parametrize("precision", PRECISIONS)
def test_miou_matches_onnxruntime(trt_bundle: Path, precision: str) -> None:
    _precision_or_skip(trt_bundle, precision)
    reference = _miou(trt_bundle, "onnxruntime", precision, providers=["CPUExecutionProvider"])
    candidate = _miou(trt_bundle, "tensorrt", precision)
    assert abs(candidate - reference) <= MIOU_TOLERANCE[precision], (
        f"{precision}: mIoU TensorRT {candidate:.2f} vs ONNX Runtime {reference:.2f} on "
        f"{EPISODES} synthetic-5i episodes")


def test_segmenter_end_to_end_on_tensorrt(trt_bundle: Path) -> None:
    from crnet.runtime import Segmenter

    episode = Synthetic5i(0, split="test", seed=1).episode(0, 2)
    with Segmenter(trt_bundle, backend="tensorrt", precision="fp32") as segmenter:
        assert segmenter.backend_name == "tensorrt"
        segmenter.set_support(list(episode.support_images),
                              [mask == 1 for mask in episode.support_masks])
        mask, probability = segmenter.segment(episode.query_image, return_prob=True)
    assert mask.shape == episode.query_image.shape[:2] and mask.dtype == bool
    assert probability.shape == mask.shape
    assert np.isfinite(probability).all()


def test_rebuild_reuses_timing_cache(trt_bundle: Path) -> None:
    cache = trt_bundle / "engines" / "timing.cache"
    before = cache.stat().st_size
    build_bundle(trt_bundle, "fp32", log=print)
    info = json.loads(engine_paths(trt_bundle, "refine", "fp32")[1].read_text())
    assert info["builder"]["timing_cache_state"].startswith("read ")
    assert cache.stat().st_size >= before
