"""The manifest schema (runtime.schema): every field checked before any graph loads, with
one-line errors naming the field, and graphs checked against the manifest at load."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime import Segmenter
from crnet.runtime.bundle import Bundle, BundleError
from crnet.runtime.files import sha256_file

Change = Callable[[dict[str, Any]], Any]


@pytest.fixture
def bundle_copy(runtime_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny bundle, free to tamper with."""
    return Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))


def _edit(root: Path, change: Change) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))  # NaN, Infinity as JSON does


def _gate(**fields: Any) -> dict[str, Any]:
    record = {"passed": True, "delta_miou": -0.5, "max_abs_delta_miou": 2.0, "episodes": 4,
              "graphs": {"backbone": "0" * 64, "refine": "1" * 64}}
    record.update(fields)
    return {key: value for key, value in record.items() if value is not ...}


def _set(*path_and_value: Any) -> Change:
    """A change that sets manifest[path...] = value (the last argument)."""
    *path, value = path_and_value

    def change(manifest: dict[str, Any]) -> None:
        where = manifest
        for key in path[:-1]:
            where = where[key]
        where[path[-1]] = value
    return change


def _drop(*path: str) -> Change:
    def change(manifest: dict[str, Any]) -> None:
        where = manifest
        for key in path[:-1]:
            where = where[key]
        where.pop(path[-1])
    return change


# (what is wrong, the change, text the one-line error must hold)
CASES: list[tuple[str, Change, str]] = [
    ("gates as a list", _set("gates", [{"passed": True}]),
     "gates is a list of 1 items; expected a JSON object"),
    ("a gate without passed", _set("gates", {"fp32": {"onnxruntime": _gate(passed=...)}}),
     "gates.fp32.onnxruntime.passed is null; expected true or false"),
    ("a gate without delta_miou", _set("gates", {"fp32": {"onnxruntime": _gate(
        delta_miou=...)}}), "gates.fp32.onnxruntime.delta_miou is null"),
    ("delta_miou as a string", _set("gates", {"fp32": {"onnxruntime": _gate(
        delta_miou="-0.5")}}), "delta_miou is '-0.5'; expected a finite number"),
    ("a gate of an unknown precision", _set("gates", {"int4": {}}), "gates key 'int4'"),
    ("a 1 MB backend name", _set("gates", {"fp32": {"x\n" * 500_000: []}}),
     "gates.fp32.'x\\nx\\nx"),
    ("feature_channels 'abc'", _set("feature_channels", "abc"),
     "feature_channels is 'abc'; expected an integer from 1 to 2048"),
    ("no feature_channels", _drop("feature_channels"), "feature_channels is null"),
    ("input_size 10^6", _set("input_size", [10 ** 6, 10 ** 6]),
     "input_size is [1000000, 1000000]; expected [height, width], integers from 32 to 2048"),
    ("input_size 10^30", _set("input_size", [10 ** 30, 65]), "input_size is [about 10^30, 65]"),
    ("feature_size beyond the input", _set("feature_size", [99, 9]),
     "feature_size is [99, 9]; expected at most the input_size [65, 65]"),
    ("std inf", _set("preprocessing", "std", [math.inf, 0.2, 0.2]),
     "preprocessing.std[0] is inf; expected a list of 3 finite numbers"),
    ("std negative", _set("preprocessing", "std", [0.2, -0.2, 0.2]),
     "preprocessing.std[1] is -0.2"),
    ("std 0", _set("preprocessing", "std", [0.2, 0.2, 0]), "preprocessing.std[2] is 0"),
    ("mean NaN", _set("preprocessing", "mean", [0.4, math.nan, 0.4]),
     "preprocessing.mean[1] is nan"),
    ("model std inf", _set("model", "std", [math.inf, 0.2, 0.2]), "model.std[0] is inf"),
    ("a BGR bundle", _set("preprocessing", "color", "BGR"),
     "preprocessing.color is 'BGR'; expected one of ['RGB']"),
    ("a pixel scale the runtime does not apply", _set("preprocessing", "scale", 1.0),
     "preprocessing.scale is 1.0"),
    ("format_version 99", _set("format_version", 99),
     "format_version is 99; this crnet reads format versions up to 1"),
    ("format_version as a string", _set("format_version", "1"), "format_version is '1'"),
    ("shots min > max", _set("shots", {"min": 5, "max": 2}),
     "shots.max is 2; expected at least shots.min (5)"),
    ("shots 0", _set("shots", {"min": 0, "max": 2}), "shots.min is 0"),
    ("refine_steps 10^9", _set("refine_steps", 10 ** 9), "refine_steps is 1000000000"),
    ("the model's channels disagree", _set("model", "feature_channels", 32),
     "model.feature_channels is 32; expected 16"),
    ("an unknown variant", _set("variants", "int4", {"backbone": "b.onnx"}),
     "variants key 'int4'"),
    ("a variant graph that is a number", _set("variants", "fp32", "refine", 7),
     "variants.fp32.refine is 7"),
    ("a graph io list that is an object", _set("graphs", "refine", "outputs", {}),
     "graphs.refine.outputs is an object of 0 entries"),
    ("no query_logits declared", lambda m: m["graphs"]["refine"]["outputs"].pop(0),
     "expected an entry named 'query_logits'"),
    ("1-channel logits declared", _set("graphs", "refine", "outputs", 0, "shape",
                                       [1, 1, 9, 9]),
     "graphs.refine.outputs 'query_logits' shape is [1, 1, 9, 9]; expected [1, 2, 9, 9]"),
    ("a files digest that is not sha256", _set("files", "refine.fp32.onnx", "abc"),
     "files['refine.fp32.onnx'] is 'abc'"),
    ("an ort build without a path", _set("ort_builds", {"fp32": {"refine": {}}}),
     "ort_builds.fp32.refine.path is null"),
    ("a slim record of another precision", _set("slim", {"precision": "int4"}),
     "slim.precision is 'int4'"),
    ("flops as text", _set("flops", "segment", "many"), "flops.segment is 'many'"),
    ("a golden threshold NaN", _set("golden", {"file": "golden.npz", "threshold": math.nan}),
     "golden.threshold is nan; expected a finite number from 0 to 1"),
    ("a golden gate as text", _set("golden", {"file": "golden.npz",
                                              "max_abs_delta_miou": {"int8": "1"}}),
     "golden.max_abs_delta_miou.int8 is '1'"),
    ("an adaptable shape of text", _set("adaptable", {"tensors": {"w": {"shape": ["4"]}}}),
     "adaptable.tensors['w'].shape is ['4']"),
]


@pytest.mark.parametrize(("what", "change", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_bad_field_is_a_one_line_bundle_error(bundle_copy: Path, what: str,
                                                   change: Change, message: str) -> None:
    _edit(bundle_copy, change)
    with pytest.raises(BundleError) as raised:
        Bundle.load(bundle_copy, verify=False)
    text = str(raised.value)
    assert message in text, f"{what}: {text}"
    assert "\n" not in text and str(bundle_copy / "manifest.json") in text
    assert len(text) < 400  # the value is truncated, never echoed whole


@pytest.mark.parametrize("change", [
    _set("gates", [{"passed": True}]),
    _set("gates", {"fp32": {"onnxruntime": _gate(delta_miou="-0.5")}}),
    _set("gates", {"fp32": {"onnxruntime": _gate(passed=...)}}),
    _set("preprocessing", "std", [0.2, 0.2, 0]),
], ids=["gates list", "delta string", "gate without passed", "std 0"])
def test_auto_segmenter_refuses_before_loading_a_graph(bundle_copy: Path, change: Change,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``Segmenter(b, backend="auto")`` on a bad manifest: a BundleError, and no session."""
    import onnxruntime

    def no_session(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a graph was loaded before the manifest was checked")

    monkeypatch.setattr(onnxruntime, "InferenceSession", no_session)
    _edit(bundle_copy, change)
    with pytest.raises(BundleError):
        Segmenter(bundle_copy, backend="auto")


def test_the_exported_bundles_pass(runtime_bundle: Path, int8_bundle: Path) -> None:
    for root in (runtime_bundle, int8_bundle):
        manifest = Bundle.load(root).manifest
        assert manifest["format_version"] == 1


def test_a_manifest_with_too_many_files_is_refused_before_any_path(
        bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """More ``files`` entries than the cap: refused by count, before any name is resolved."""
    from crnet.runtime import bundle as bundle_module
    from crnet.runtime.schema import MAX_FILES

    def resolve(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a listed path was resolved before the count was checked")

    monkeypatch.setattr(bundle_module, "relative_member", resolve)
    extra = {f"f{index}": "0" * 64 for index in range(2 * MAX_FILES)}
    _edit(bundle_copy, lambda m: m["files"].update(extra))
    with pytest.raises(BundleError, match=r"files is an object of 200\d\d entries; expected "
                                          f"at most {MAX_FILES} entries"):
        Bundle.load(bundle_copy)


def test_a_manifest_over_the_byte_cap_is_refused_before_parsing(
        bundle_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1.3 M ``files`` entries make a manifest of about 100 MB: refused by its size, unread."""
    from crnet.runtime.schema import MAX_MANIFEST_BYTES

    def parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the oversized manifest was parsed")

    path = bundle_copy / "manifest.json"
    with path.open("r+b") as handle:  # a valid start, then padding past the cap
        handle.seek(MAX_MANIFEST_BYTES)
        handle.write(b" ")
    monkeypatch.setattr(json, "loads", parse)
    with pytest.raises(BundleError, match=f"manifest.json is {MAX_MANIFEST_BYTES + 1} bytes; "
                                          f"expected at most {MAX_MANIFEST_BYTES}"):
        Bundle.load(bundle_copy)


def test_crnet_bench_on_a_bad_manifest_exits_with_the_bundle_error_code(
        bundle_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main as crnet_main

    original = (bundle_copy / "manifest.json").read_text()
    for change, field in ((_set("feature_channels", "abc"), "feature_channels is 'abc'"),
                          (_drop("feature_channels"), "feature_channels is null"),
                          (_set("checkpoint", []), "checkpoint is []; expected a JSON object")):
        (bundle_copy / "manifest.json").write_text(original)
        _edit(bundle_copy, change)
        code = crnet_main(["bench", str(bundle_copy), "--backend", "onnxruntime",
                           "--iterations", "1", "--warmup", "0", "--no-progress"])
        error = capsys.readouterr().err.strip()
        assert code == 1, error
        assert field in error and len(error.splitlines()) == 1


# -- graphs against the manifest ---------------------------------------------------------

def _doctor_refine(root: Path, cut: dict[int, int]) -> None:
    """Rewrite refine.fp32.onnx so that query_logits keeps only ``cut`` {axis: size} of the
    real output (a Slice), and re-sign the manifest's hash of it: only the schema's graph
    check can notice."""
    import onnx
    from onnx import helper

    path = root / "refine.fp32.onnx"
    model = onnx.load(str(path))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["query_logits_full" if name == "query_logits" else name
                          for name in node.output]
    axes = sorted(cut)
    constants = {"cut_starts": [0] * len(axes), "cut_ends": [cut[a] for a in axes],
                 "cut_axes": axes}
    for name, values in constants.items():
        graph.initializer.append(helper.make_tensor(name, onnx.TensorProto.INT64,
                                                    [len(values)], values))
    graph.node.append(helper.make_node("Slice", ["query_logits_full", *constants],
                                       ["query_logits"]))
    output = next(value for value in graph.output if value.name == "query_logits")
    for axis, size in cut.items():
        output.type.tensor_type.shape.dim[axis].dim_value = size
    onnx.save(model, str(path))
    digest = sha256_file(path)
    _edit(root, _set("files", "refine.fp32.onnx", digest))


DOCTORED = [({1: 1}, "'query_logits' has shape [1, 1, 9, 9]; the manifest expects "
                     "[1, 2, 9, 9] (2 logit channels"),
            ({2: 5, 3: 5}, "'query_logits' has shape [1, 2, 5, 5]; the manifest expects "
                           "[1, 2, 9, 9] (feature_size height 9)")]


@pytest.mark.parametrize(("cut", "message"), DOCTORED, ids=["1-channel", "5x5"])
def test_onnxruntime_refuses_a_graph_the_manifest_does_not_describe(
        bundle_copy: Path, cut: dict[int, int], message: str) -> None:
    _doctor_refine(bundle_copy, cut)
    Bundle.load(bundle_copy)  # the manifest and every hash are fine
    with pytest.raises(BundleError, match="refine graph") as raised:
        Segmenter(bundle_copy, backend="onnxruntime", threads=1)
    assert message in str(raised.value) and "refine.fp32.onnx" in str(raised.value)


@pytest.mark.openvino
@pytest.mark.parametrize(("cut", "message"), DOCTORED, ids=["1-channel", "5x5"])
def test_openvino_refuses_a_graph_the_manifest_does_not_describe(
        bundle_copy: Path, cut: dict[int, int], message: str) -> None:
    pytest.importorskip("openvino", reason="the openvino extra is not installed")
    _doctor_refine(bundle_copy, cut)
    with pytest.raises(BundleError, match="refine graph") as raised:
        Segmenter(bundle_copy, backend="openvino", threads=1)
    assert message in str(raised.value)


def test_the_doctored_graph_gives_a_mask_without_the_check(
        bundle_copy: Path, episode, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    """What the check prevents: with it switched off, 5x5 logits of a 9x9 feature map
    segment without any error (the mask is silently wrong)."""
    from crnet.runtime.backends import onnxruntime_backend

    _doctor_refine(bundle_copy, {2: 5, 3: 5})
    monkeypatch.setattr(onnxruntime_backend, "check_session_io", lambda *args: None)
    with Segmenter(bundle_copy, backend="onnxruntime", threads=1) as segmenter:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        mask = segmenter.segment(episode.query_image)
    assert mask.shape == episode.query_image.shape[:2] and mask.dtype == np.bool_


@pytest.mark.parametrize(("inputs", "outputs", "message"), [
    ([("image", (None, 3, 65, 65), "float32")], [("feat", (None, 16, 9), "float32")],
     "output 'feat' has rank 3"),
    ([("image", (None, 3, 65, 65), "float32")], [("feat", (None, 8, 9, 9), "float32")],
     "expects [?, 16, 9, 9] (feature_channels 16)"),
    ([("image", (1, 3, 65, 65), "float32")], [("feat", (1, 16, 9, 9), "float32")],
     "a fixed size on axis 0"),
    ([("image", (None, 3, 64, 64), "float32")], [("feat", (None, 16, 9, 9), "float32")],
     "(input_size height 65)"),
    ([("image", (None, 3, 65, 65), "int64")], [("feat", (None, 16, 9, 9), "float32")],
     "input 'image' is int64"),
    ([("pixels", (None, 3, 65, 65), "float32")], [("feat", (None, 16, 9, 9), "float32")],
     "has inputs ['pixels']; the manifest expects ['image']"),
    ([("image", (None, 3, 65, 65), "float32")], [("features", (None, 16, 9, 9), None)],
     "has no output 'feat'"),
])
def test_check_graph_io_names_the_mismatch(runtime_bundle: Path, inputs: list[Any],
                                           outputs: list[Any], message: str) -> None:
    from crnet.runtime.schema import check_graph_io

    manifest = Bundle.load(runtime_bundle, verify=False).manifest
    check_graph_io(manifest, "backbone", [("image", (None, 3, 65, 65), "float32")],
                   [("feat", (None, 16, 9, 9), "float16")], "b.onnx")  # the good one
    with pytest.raises(BundleError, match="backbone graph") as raised:
        check_graph_io(manifest, "backbone", inputs, outputs, "b.onnx")
    assert message in str(raised.value)


def _claim_channels(manifest: dict[str, Any], channels: int) -> None:
    """A self-consistent manifest that says the features have ``channels`` channels."""
    manifest["feature_channels"] = manifest["model"]["feature_channels"] = channels
    for graph in manifest["graphs"].values():
        for entry in graph["inputs"] + graph["outputs"]:
            if entry["name"] in ("feat", "query_feat", "support_feat"):
                entry["shape"][1] = channels


def test_every_backend_refuses_graphs_with_other_channels(bundle_copy: Path) -> None:
    """A manifest that passes the schema but promises 32 channels where the graphs (and the
    checkpoint) have 16: onnxruntime names the graph, torch the checkpoint."""
    pytest.importorskip("torch")
    from crnet.runtime.backends.base import BackendError

    _edit(bundle_copy, lambda m: _claim_channels(m, 32))
    Bundle.load(bundle_copy)
    with pytest.raises(BundleError, match=r"backbone.fp32.onnx: the backbone graph's output "
                                          r"'feat' has shape \[\?, 16, 9, 9\]"):
        Segmenter(bundle_copy, backend="onnxruntime", threads=1)
    with pytest.raises(BackendError, match="the bundle and its checkpoint disagree"):
        Segmenter(bundle_copy, backend="torch", threads=1)


class _EngineStub:
    """What check_engine_io asks a deserialized TensorRT engine (shapes; -1 is dynamic)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]) -> None:
        self.shapes = shapes

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.shapes[name]


@pytest.mark.parametrize(("logits", "message"), [
    ((1, 2, 9, 9), None), ((1, 1, 9, 9), "'query_logits' has shape [1, 1, 9, 9]"),
    ((1, 2, 5, 5), "'query_logits' has shape [1, 2, 5, 5]")])
def test_tensorrt_engines_are_checked_against_the_manifest(
        runtime_bundle: Path, logits: tuple[int, ...], message: str | None) -> None:
    """The tensorrt backend's check reads each engine's tensor shapes (no TensorRT here)."""
    from crnet.runtime.backends.tensorrt_backend import _EngineRunner, check_engine_io

    bundle = Bundle.load(runtime_bundle, verify=False)
    runner = object.__new__(_EngineRunner)
    runner.plan = Path("engines/refine.fp32.plan")
    runner.inputs = ["query_feat", "support_feat", "support_mask"]
    runner.outputs = ["query_logits", "support_logits"]
    runner.dtypes = {name: np.dtype(np.float32) for name in runner.inputs + runner.outputs}
    runner.engine = _EngineStub({
        "query_feat": (1, 16, 9, 9), "support_feat": (-1, 16, 9, 9),
        "support_mask": (-1, 1, 9, 9), "query_logits": logits,
        "support_logits": (-1, 2, 9, 9)})
    if message is None:
        check_engine_io(bundle, "refine", runner)
        return
    with pytest.raises(BundleError, match="refine.fp32.plan: the refine graph") as raised:
        check_engine_io(bundle, "refine", runner)
    assert message in str(raised.value)


def test_tensor_info_reads_each_backends_dynamic_dimensions() -> None:
    from crnet.runtime.schema import tensor_info

    assert tensor_info("x", ["batch", 3, None, -1], "tensor(float)") == (
        "x", (None, 3, None, None), "float32")
    assert tensor_info("x", None, None) == ("x", None, None)
