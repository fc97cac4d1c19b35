from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from crnet.runtime.backends import REGISTRY, BackendError, availability, backend_class
from crnet.runtime.backends.base import ModelSpec
from crnet.runtime.bundle import Bundle


def test_registry_and_availability() -> None:
    report = availability()
    assert set(report) == set(REGISTRY) == {"onnxruntime", "openvino", "tensorrt", "torch"}
    for available, reason in report.values():
        assert isinstance(available, bool) and reason
    with pytest.raises(BackendError, match="unknown backend 'cuda'"):
        backend_class("cuda")


def test_the_registry_answers_what_orchestration_asks(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.runtime.backends import base

    assert base.backend_names() == ["onnxruntime", "openvino", "tensorrt", "torch"]
    assert base.backends_where("runs_on_cpu") == ["onnxruntime", "openvino", "torch"]
    assert base.backends_where("takes_threads") == ["onnxruntime", "openvino", "torch"]
    assert base.backends_where("optional_cpu_engine") == ["openvino"]
    assert base.backends_where("inference_precision_hints") == ["openvino"]
    for role in (base.REFERENCE_BACKEND, base.ENGINE_BACKEND, base.CPU_BUILD_BACKEND):
        assert role in base.REGISTRY
    openvino = backend_class("openvino")
    monkeypatch.setattr(openvino, "is_available", classmethod(lambda cls: (False, "absent")))
    assert base.backends_where("optional_cpu_engine", installed=True) == []
    monkeypatch.setattr(openvino, "is_available", classmethod(lambda cls: (True, "here")))
    assert base.backends_where("optional_cpu_engine", installed=True) == ["openvino"]
    # a plugin registered under a name the orchestration never spells gets the same questions
    monkeypatch.setitem(base.REGISTRY, "plugin",
                        "crnet.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend")
    assert "plugin" in base.backends_where("takes_threads")


def test_backends_say_whether_a_query_skips_the_support_branch() -> None:
    pruned = {"query_refine": {"pruned": True}}
    assert backend_class("onnxruntime").runs_query_branch_only(pruned)
    assert not backend_class("onnxruntime").runs_query_branch_only({})
    assert backend_class("torch").runs_query_branch_only({})
    assert backend_class("openvino").runs_query_branch_only({"query_graph": {"fused": True}})
    assert not backend_class("openvino").runs_query_branch_only(pruned)
    assert not backend_class("tensorrt").runs_query_branch_only({})


def test_lifecycle_and_graph_calls_agree(runtime_bundle: Path) -> None:
    bundle = Bundle.load(runtime_bundle)
    spec = ModelSpec.from_manifest(bundle.manifest)
    onnx = backend_class("onnxruntime")(bundle, "fp32", threads=1)
    with pytest.raises(BackendError, match="not active"):
        onnx.run_backbone(np.zeros((1, 3, *spec.input_size), np.float32))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((3, 3, *spec.input_size), dtype=np.float32)
    mask = (rng.random((2, 1, *spec.feature_size)) > 0.5).astype(np.float32)
    outputs = {}
    for name, options in (("onnxruntime", {"threads": 1}), ("torch", {"threads": 1})):
        with backend_class(name)(bundle, "fp32", **options) as backend:
            assert backend.is_active
            feat = backend.run_backbone(images)
            assert feat.shape == (3, spec.feature_channels, *spec.feature_size)
            query_logits, support_logits = backend.run_refine(feat[:1], feat[1:], mask)
            assert query_logits.shape == (1, 2, *spec.feature_size)
            assert support_logits.shape == (2, 2, *spec.feature_size)
            # The query-only paths segment() uses give the same query logits.
            np.testing.assert_allclose(backend.run_query_refine(feat[:1], feat[1:], mask),
                                       query_logits, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(backend.run_query(images[:1], feat[1:], mask),
                                       query_logits, rtol=1e-5, atol=1e-5)
            outputs[name] = (feat, query_logits)
            assert backend.describe()["backend"] == name
        assert not backend.is_active
    for ours, reference in zip(outputs["onnxruntime"], outputs["torch"], strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-3, atol=1e-3)


def test_onnxruntime_query_sessions_and_their_fallback(
        runtime_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = Bundle.load(runtime_bundle)
    spec = ModelSpec.from_manifest(bundle.manifest)
    rng = np.random.default_rng(1)
    image = rng.standard_normal((1, 3, *spec.input_size), dtype=np.float32)
    mask = np.zeros((1, 1, *spec.feature_size), np.float32)
    mask[..., 2:6, 2:6] = 1.0
    backend_type = backend_class("onnxruntime")
    with backend_type(bundle, "fp32", threads=1) as backend:
        info = backend.describe()["query_refine"]
        assert info["pruned"] and info["chained"] == "yes" and info["nodes"] < info["of_nodes"]
        support = backend.run_backbone(rng.standard_normal((1, 3, *spec.input_size),
                                                           dtype=np.float32))
        fused = backend.run_query(image, support, mask)

    def refuse(*_: object) -> None:
        raise ValueError("cannot prune this graph")

    monkeypatch.setattr("crnet.runtime.graph_prune.prune_to_outputs", refuse)
    with backend_type(bundle, "fp32", threads=1) as backend:
        info = backend.describe()["query_refine"]
        assert not info["pruned"] and "cannot prune this graph" in info["reason"]
        assert set(backend.sessions) == {"backbone", "refine"}
        np.testing.assert_allclose(backend.run_query(image, support, mask), fused,
                                   rtol=1e-5, atol=1e-5)


def test_model_spec_from_manifest(runtime_bundle: Path) -> None:
    spec = ModelSpec.from_manifest(Bundle.load(runtime_bundle).manifest)
    assert spec.input_size == (65, 65) and spec.feature_size == (9, 9)
    assert (spec.min_shots, spec.max_shots) == (1, 8) and len(spec.mean) == 3


@pytest.mark.parametrize(("options", "allow", "stop"), [
    ({}, "1", "1"),  # the default: workers spin while a run is active, never after it
    ({"spin_between_runs": True}, "1", None),  # ORT's own default, for a dedicated machine
    ({"spinning": False}, "0", None),
])
def test_onnxruntime_spinning_policy(runtime_bundle: Path, options: dict, allow: str,
                                     stop: str | None) -> None:
    backend = backend_class("onnxruntime")(Bundle.load(runtime_bundle), "fp32", threads=2,
                                           **options)
    with backend:
        for graph, session in backend.sessions.items():
            entries = session.get_session_options()
            assert entries.get_session_config_entry(
                "session.intra_op.allow_spinning") == allow, graph
            if stop is None:
                with pytest.raises(RuntimeError, match="does not have configuration"):
                    entries.get_session_config_entry("session.force_spinning_stop")
            else:
                assert entries.get_session_config_entry("session.force_spinning_stop") == stop
        spinning = backend.describe()["spinning"]
    expected = {"1": "between runs too" if stop is None else "during runs", "0": "no"}[allow]
    assert spinning == {"query": expected, "backbone and refine": expected}
