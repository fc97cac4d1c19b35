"""The GPU suite: every TensorRT variant against ONNX Runtime and the PyTorch model.

    python -m pytest -m tensorrt tests/engines/test_tensorrt_suite.py
    CRNET_TRT_BUNDLE=bundle/ python -m pytest -m tensorrt tests/engines/test_tensorrt_suite.py

The bundle is a private copy of $CRNET_TRT_BUNDLE (a bundle with its checkpoint, for the
PyTorch reference), else of the bundled trained checkpoint (crnet-lite fold 0: spread,
decisive logits) exported here with fp16 and int8 variants; `crnet build` builds the
engines of every variant. Per variant:

* every engine output against ONNX Runtime (CPU) on the same graph and real episode
  inputs (trt_comparisons.output_problems: a zeroed or scaled output fails);
* mIoU on $CRNET_TRT_EPISODES (default 100) synthetic-5i episodes, 1 to 3 shots: TensorRT
  against ONNX Runtime on the same variant and against the PyTorch fp32 model, each within
  the variant's accuracy gate (crnet/gates.json);
* Polygraphy's comparator, Segmenter end to end, and a rebuild that reads the timing cache.

pytest then prints one table to paste into an issue (tests/engines/conftest.py; written as
JSON too where $CRNET_TRT_SUMMARY names a file). Skipped, with the reason, where tensorrt
does not import or imports without a GPU that answers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.tensorrt
trt = pytest.importorskip(
    "tensorrt", reason="tensorrt does not import: the TensorRT suite needs TensorRT 10/11 "
                       "(pip install tensorrt-cu12 cuda-python) and an NVIDIA GPU")

from crnet.runtime.backends.tensorrt_backend import TensorRTBackend  # noqa: E402

_AVAILABLE, _REASON = TensorRTBackend.is_available()
if not _AVAILABLE:
    pytest.skip(f"tensorrt {trt.__version__} imports but the tensorrt backend cannot run: "
                f"{_REASON}", allow_module_level=True)

from crnet.data.synthetic import Synthetic5i  # noqa: E402
from crnet.engines.build_engine import build_bundle  # noqa: E402
from crnet.evaluate import load_gates  # noqa: E402
from crnet.runtime.backends.base import ModelSpec  # noqa: E402
from crnet.runtime.bundle import GRAPHS, PRECISIONS, Bundle  # noqa: E402
from crnet.runtime.layout import engine_paths  # noqa: E402
from tests.engines import trt_summary  # noqa: E402
from tests.engines.trt_comparisons import (  # noqa: E402
    OUTPUT_TOLERANCE,
    miou_problems,
    output_problems,
)
from tests.engines.trt_suite_bundle import copy_without_engines, episode_inputs  # noqa: E402

EPISODES = int(os.environ.get("CRNET_TRT_EPISODES", "100"))
SHOT_CYCLE = (1, 2, 3)
OUTPUT_EPISODES = 4  # real episodes per variant for the output comparison


@pytest.fixture(scope="module")
def trt_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of $CRNET_TRT_BUNDLE, or the bundled trained checkpoint exported with
    fp16 and int8 variants; engines of every variant built."""
    source = os.environ.get("CRNET_TRT_BUNDLE")
    root = tmp_path_factory.mktemp("trt") / "bundle"
    if source:
        copy = copy_without_engines(Path(source), root)
    else:
        from crnet.calibration.precision import quantize_bundle
        from crnet.export.to_onnx import export_bundle

        export_bundle(root, progress=False)
        for precision in ("fp16", "int8"):
            quantize_bundle(root, precision)
        copy = root
    build_bundle(copy, "all", log=print)
    info = json.loads(engine_paths(copy, "refine", "fp32")[1].read_text())
    trt_summary.describe(tensorrt=trt.__version__, gpu=info.get("gpu_name", "?"),
                         compute_capability=info.get("compute_capability", "?"),
                         bundle=source or "bundled trained checkpoint (crnet-lite fold 0)",
                         episodes=EPISODES)
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


def _episode_outputs(backend: Any, inputs: dict[str, np.ndarray],
                     features: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Both graphs' outputs; the refine graph runs on ``features`` (the same for every
    backend compared) or on the backend's own."""
    feat = backend.run_backbone(inputs["images"])
    source = feat if features is None else features
    query, support = backend.run_refine(source[:1], source[1:], inputs["support_mask"])
    return {"feat": feat, "query_logits": query, "support_logits": support}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_outputs_match_onnxruntime(trt_bundle: Path, precision: str) -> None:
    from crnet.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle = _precision_or_skip(trt_bundle, precision)
    spec = ModelSpec.from_manifest(bundle.manifest)
    dataset = Synthetic5i(0, split="test", seed=0)
    problems: list[str] = []
    with TensorRTBackend(bundle, precision) as tensorrt, \
            OnnxRuntimeBackend(bundle, precision, providers=["CPUExecutionProvider"]) as ort:
        for index in range(OUTPUT_EPISODES):
            shots = 1 if index % 2 == 0 else spec.max_shots - 1 or 1
            inputs = episode_inputs(spec, dataset.episode(index, shots))
            expected = _episode_outputs(ort, inputs)
            actual = _episode_outputs(tensorrt, inputs, features=expected["feat"])
            for name, reference in expected.items():
                problems += [f"episode {index} K={shots} {problem}" for problem in
                             output_problems(name, reference, actual[name], precision)]
    trt_summary.record(precision, "outputs vs ONNX Runtime", "pass" if not problems else
                       f"FAIL: {len(problems)} problem(s), first: {problems[0]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_polygraphy_comparator_tensorrt_vs_onnxruntime(trt_bundle: Path, precision: str
                                                      ) -> None:
    """The same comparison through Polygraphy's Comparator (TrtRunner on our plan,
    OnnxrtRunner on the same ONNX variant), per-output absolute tolerances scaled by the
    output's ONNX Runtime magnitude, on one real episode."""
    pytest.importorskip("polygraphy", reason="pip install polygraphy")
    from crnet.engines.polygraphy_debug import compare_runners, onnxrt_runner, trt_runner
    from crnet.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    bundle = _precision_or_skip(trt_bundle, precision)
    inputs = episode_inputs(ModelSpec.from_manifest(bundle.manifest),
                            Synthetic5i(0, split="test", seed=0).episode(7, 1))
    with OnnxRuntimeBackend(bundle, precision, providers=["CPUExecutionProvider"]) as ort:
        expected = _episode_outputs(ort, inputs)
    feat = expected["feat"]
    feeds = {"backbone": {"image": inputs["images"]},
             "refine": {"query_feat": feat[:1], "support_feat": feat[1:],
                        "support_mask": inputs["support_mask"]}}
    for graph in GRAPHS:
        plan, _ = engine_paths(trt_bundle, graph, precision)
        outputs = [spec["name"] for spec in bundle.io(graph)["outputs"]]
        atol = {name: OUTPUT_TOLERANCE[precision] * float(np.abs(expected[name]).max())
                for name in outputs}
        result = compare_runners([trt_runner(plan, f"trt-{graph}"),
                                  onnxrt_runner(bundle.graph_path(graph, precision),
                                                f"ort-{graph}")],
                                 [feeds[graph]], atol, {name: 0.0 for name in outputs})
        assert result.passed, f"{graph} {precision}: max |diff| {result.max_abs_diff}"


@pytest.fixture(scope="module")
def mious(trt_bundle: Path) -> dict[str, float]:
    """mIoU of the PyTorch fp32 model ("torch") and of ONNX Runtime ("onnxruntime-<p>") and
    TensorRT ("tensorrt-<p>") on every variant, in one pass over the same episodes."""
    from crnet.data.evaluation import evaluate_many, segmenter_predictor
    from crnet.runtime import Segmenter

    bundle = Bundle.load(trt_bundle)
    segmenters = {"torch": Segmenter(trt_bundle, backend="torch", precision="fp32")}
    for precision in bundle.precisions:
        segmenters[f"onnxruntime-{precision}"] = Segmenter(
            trt_bundle, backend="onnxruntime", precision=precision,
            providers=["CPUExecutionProvider"])
        segmenters[f"tensorrt-{precision}"] = Segmenter(trt_bundle, backend="tensorrt",
                                                        precision=precision)
    dataset = Synthetic5i(0, split="test", seed=0)
    episodes = (dataset.episode(index, SHOT_CYCLE[index % len(SHOT_CYCLE)])
                for index in range(EPISODES))
    try:
        results = evaluate_many({name: segmenter_predictor(segmenter)
                                 for name, segmenter in segmenters.items()}, episodes,
                                total=EPISODES, progress=False, classes=dataset.classes)
    finally:
        for segmenter in segmenters.values():
            segmenter.close()
    return {name: float(result.miou) for name, result in results.items()}


@pytest.mark.parametrize("precision", PRECISIONS)
def test_miou_within_the_gates(trt_bundle: Path, mious: dict[str, float],
                               precision: str) -> None:
    _precision_or_skip(trt_bundle, precision)
    gate = load_gates()[precision]
    candidate = mious[f"tensorrt-{precision}"]
    problems = []
    for reference_name, what in ((f"onnxruntime-{precision}", f"ONNX Runtime {precision}"),
                                 ("torch", "PyTorch fp32")):
        reference = mious[reference_name]
        found = miou_problems(f"TensorRT {precision} vs {what}", candidate, reference, gate)
        trt_summary.record(precision, f"mIoU vs {what}",
                           f"{candidate:.2f} vs {reference:.2f} ({candidate - reference:+.2f}, "
                           f"gate +-{gate:g}) " + ("pass" if not found else "FAIL"))
        problems += found
    assert not problems, "\n".join(problems)


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
    assert 0 < np.count_nonzero(mask) < mask.size  # the trained model's mask has a boundary


def test_rebuild_reuses_timing_cache(trt_bundle: Path) -> None:
    cache = trt_bundle / "engines" / "timing.cache"
    before = cache.stat().st_size
    build_bundle(trt_bundle, "fp32", log=print)
    info = json.loads(engine_paths(trt_bundle, "refine", "fp32")[1].read_text())
    assert info["builder"]["timing_cache_state"].startswith("read ")
    assert cache.stat().st_size >= before
