"""Adapters applied by the onnxruntime and openvino backends, fp32/fp16/int8: the masks
follow the torch model carrying the same weights within each precision's gate, None
restores the shipped weights, and int8 scales are re-computed by the quantizer's rule."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime.adapter import (
    Adapter,
    AdapterError,
    adaptable_tensors,
    graph_overrides,
    symmetric_int8_scale,
)
from crnet.runtime.bundle import Bundle
from tests.runtime.test_adapter import make_adapter

EPISODES = 6
PRECISIONS = ("fp32", "fp16", "int8")
# The perturbation stands in for a finetune: large enough that the torch model's masks
# move by many times the int8 gate on these episodes.
PERTURBATION = 0.6
PARTS = ("cross_reference", "condition", "refinement")


@pytest.fixture(scope="module")
def adapter_bundle(int8_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the int8 test bundle with an fp16 variant added (fp32, fp16, int8)."""
    from crnet.calibration.fp16 import quantize_fp16
    from crnet.calibration.options import Fp16Options

    root = tmp_path_factory.mktemp("adapter") / "bundle"
    shutil.copytree(int8_bundle, root)
    quantize_fp16(root, Fp16Options(check_episodes=0, progress=False))
    return root


@pytest.fixture(scope="module")
def adapter(adapter_bundle: Path) -> Adapter:
    return make_adapter(Bundle.load(adapter_bundle), seed=3, scale=PERTURBATION, parts=PARTS)


@pytest.fixture(scope="module")
def episodes() -> list[Any]:
    from crnet.data.synthetic import Synthetic5i

    dataset = Synthetic5i(0, split="test", seed=0)
    return [dataset.episode(index, shots=2) for index in range(EPISODES)]


def torch_model(bundle: Path, adapter: Adapter | None) -> Any:
    """The bundle's checkpoint in torch, with ``adapter``'s tensors copied in by the
    torch names the export recorded."""
    import torch

    from crnet.models.checkpoint import load_checkpoint

    loaded = load_checkpoint(bundle / "checkpoint.safetensors")
    model = copy.deepcopy(loaded[0] if isinstance(loaded, tuple) else loaded).eval()
    if adapter is not None:
        record = adaptable_tensors(Bundle.load(bundle))
        parameters = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in adapter.tensors.items():
                parameters[record[name]["torch_name"]].copy_(torch.from_numpy(tensor))
    return model


def miou(segmenter: Any, episodes: list[Any]) -> tuple[float, list[np.ndarray]]:
    from crnet.data.evaluation import evaluate, segmenter_predictor

    result = evaluate(segmenter_predictor(segmenter), episodes, progress=False,
                      keep_predictions=True)
    return result.miou, result.predictions  # percent


@pytest.fixture(scope="module")
def torch_reference(adapter_bundle: Path, adapter: Adapter, episodes: list[Any]
                    ) -> dict[str, tuple[float, list[np.ndarray]]]:
    """mIoU and masks of the shipped and the adapted torch model."""
    from crnet.runtime import Segmenter

    results = {}
    for label, source in (("shipped", None), ("adapted", adapter)):
        with Segmenter(adapter_bundle, backend="torch",
                       model=torch_model(adapter_bundle, source), threads=1) as segmenter:
            results[label] = miou(segmenter, episodes)
    return results


def check_backend(backend: str, bundle: Path, adapter: Adapter, episodes: list[Any],
                  reference: dict[str, tuple[float, list[np.ndarray]]]) -> None:
    """Every precision: adapted masks within the gate of the adapted torch model and
    closer to it than to the shipped one; set_adapter(None) gives the shipped masks."""
    from crnet.evaluate import load_gates
    from crnet.runtime import Segmenter

    gates = load_gates()
    shipped_miou, _ = reference["shipped"]
    adapted_miou, adapted_masks = reference["adapted"]
    assert abs(adapted_miou - shipped_miou) > 3 * gates["int8"], "the adapter changes little"
    for precision in PRECISIONS:
        with Segmenter(bundle, backend=backend, precision=precision, threads=1) as segmenter:
            before, before_masks = miou(segmenter, episodes)
            segmenter.set_adapter(adapter)
            assert segmenter.describe()["adapter"]["identity"] == adapter.identity
            after, masks = miou(segmenter, episodes)
            segmenter.set_adapter(None)
            restored, restored_masks = miou(segmenter, episodes)
        label = f"{backend} {precision}"
        assert abs(after - adapted_miou) <= gates[precision], (label, after, adapted_miou)
        assert abs(before - shipped_miou) <= gates[precision], (label, before, shipped_miou)
        agree = np.mean([np.mean(m == r) for m, r in zip(masks, adapted_masks, strict=True)])
        shipped_agree = np.mean([np.mean(m == r) for m, r in
                                 zip(masks, reference["shipped"][1], strict=True)])
        assert agree > shipped_agree, (label, agree, shipped_agree)
        assert restored == before
        for first, second in zip(restored_masks, before_masks, strict=True):
            np.testing.assert_array_equal(first, second)


def test_onnxruntime_applies_adapters_at_every_precision(
        adapter_bundle: Path, adapter: Adapter, episodes: list[Any],
        torch_reference: dict[str, tuple[float, list[np.ndarray]]]) -> None:
    check_backend("onnxruntime", adapter_bundle, adapter, episodes, torch_reference)


@pytest.mark.openvino
def test_openvino_applies_adapters_at_every_precision(
        adapter_bundle: Path, adapter: Adapter, episodes: list[Any],
        torch_reference: dict[str, tuple[float, list[np.ndarray]]]) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    check_backend("openvino", adapter_bundle, adapter, episodes, torch_reference)


def test_int8_scales_follow_the_quantizers_rule(adapter_bundle: Path) -> None:
    """Re-computed from the shipped weights, the scales equal those the quantizer wrote,
    bit for bit; every adaptable tensor reaches each variant's refine graph."""
    import onnx
    from onnx import numpy_helper

    bundle = Bundle.load(adapter_bundle)
    record = adaptable_tensors(bundle)
    fp32 = onnx.load(str(bundle.graph_path("refine", "fp32"))).graph
    shipped = {item.name: numpy_helper.to_array(item) for item in fp32.initializer
               if item.name in record}
    int8 = onnx.load(str(bundle.graph_path("refine", "int8"))).graph
    written = {item.name: numpy_helper.to_array(item) for item in int8.initializer}
    overrides = graph_overrides(int8, shipped)
    scales = [name for name in overrides if name.endswith("_scale")]
    assert len(scales) >= 10
    for name in scales:
        np.testing.assert_array_equal(overrides[name], written[name], err_msg=name)
    for name, value in overrides.items():
        assert value.dtype == written[name].dtype, name
    fp16 = onnx.load(str(bundle.graph_path("refine", "fp16"))).graph
    assert {v.dtype for v in graph_overrides(fp16, shipped).values()} == {np.dtype("float16")}
    zero = symmetric_int8_scale(np.zeros((2, 3), np.float32), 0)
    np.testing.assert_array_equal(zero, np.ones(2, np.float32))


def test_wrong_bundle_adapter_is_refused_and_changes_nothing(
        adapter_bundle: Path, runtime_bundle: Path, episodes: list[Any]) -> None:
    from crnet.runtime import Segmenter

    other = make_adapter(Bundle.load(runtime_bundle))
    with Segmenter(adapter_bundle, backend="onnxruntime", threads=1) as segmenter:
        before = miou(segmenter, episodes[:2])
        with pytest.raises(AdapterError, match="made for another bundle"):
            segmenter.set_adapter(other)
        with pytest.raises(AdapterError, match="made for another bundle"):
            segmenter.set_support(list(episodes[0].support_images),
                                  list(episodes[0].support_masks), adapter=other)
        assert segmenter.adapter is None
        assert segmenter.describe()["adapter"] is None
        assert miou(segmenter, episodes[:2])[0] == before[0]


def test_set_support_takes_an_adapter_path(adapter_bundle: Path, adapter: Adapter,
                                           episodes: list[Any], tmp_path: Path) -> None:
    from crnet.runtime import Segmenter
    from crnet.runtime.adapter import save_adapter

    path = save_adapter(tmp_path / "adapter", adapter)
    episode = episodes[0]
    with Segmenter(adapter_bundle, backend="onnxruntime", threads=1) as by_path, \
            Segmenter(adapter_bundle, backend="onnxruntime", threads=1) as by_object:
        by_path.set_support(list(episode.support_images), list(episode.support_masks),
                            adapter=path)
        by_object.set_adapter(adapter)
        by_object.set_support(list(episode.support_images), list(episode.support_masks))
        np.testing.assert_array_equal(by_path.segment(episode.query_image),
                                      by_object.segment(episode.query_image))
        with pytest.raises(AdapterError, match="must be an Adapter"):
            by_path.set_adapter(42)  # type: ignore[arg-type]


def check_refine_calls(backend: str, bundle: Path, adapter: Adapter) -> None:
    """fp32: run_refine and run_query_refine (sessions or models created when first run
    after set_adapter) give the adapted torch model's logits, and the shipped ones after
    set_adapter(None)."""
    import torch

    from crnet.runtime import Segmenter

    rng = np.random.default_rng(0)
    manifest = Bundle.load(bundle).manifest
    channels, (height, width) = manifest["feature_channels"], manifest["feature_size"]
    query = rng.normal(size=(1, channels, height, width)).astype(np.float32)
    support = rng.normal(size=(2, channels, height, width)).astype(np.float32)
    mask = (rng.random((2, 1, height, width)) > 0.5).astype(np.float32)
    expected = {}
    for label, source in (("shipped", None), ("adapted", adapter)):
        model = torch_model(bundle, source)
        with torch.no_grad():
            logits = model.refine(torch.from_numpy(query), torch.from_numpy(support),
                                  torch.from_numpy(mask), steps=model.config.refine_steps)
        expected[label] = [t.numpy() for t in logits]
    with Segmenter(bundle, backend=backend, threads=1) as segmenter:
        for label, source in (("adapted", adapter), ("shipped", None)):
            segmenter.set_adapter(source)
            query_logits, support_logits = segmenter.backend.run_refine(query, support, mask)
            alone = segmenter.backend.run_query_refine(query, support, mask)
            np.testing.assert_allclose(query_logits, expected[label][0], atol=1e-3)
            np.testing.assert_allclose(support_logits, expected[label][1], atol=1e-3)
            np.testing.assert_allclose(alone, expected[label][0], atol=1e-3)
    assert np.abs(expected["adapted"][0] - expected["shipped"][0]).max() > 0.1


def test_onnxruntime_refine_calls_follow_the_adapter(adapter_bundle: Path,
                                                     adapter: Adapter) -> None:
    check_refine_calls("onnxruntime", adapter_bundle, adapter)


@pytest.mark.openvino
def test_openvino_refine_calls_follow_the_adapter(adapter_bundle: Path,
                                                  adapter: Adapter) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    check_refine_calls("openvino", adapter_bundle, adapter)
