"""Adapters on TensorRT: plans built with the adaptable weights refittable one by one
(engine_trt), refitted in place by the backend (tensorrt_backend.refit_named_weights),
checked against the real 10.x and 11.x bindings over stub libraries (tests/trt_bindings.py).

No GPU is involved: the doubles below stand in for a network and a refitter, and the
real-bindings tests prove the flags, method names and signatures the code uses exist in
each TensorRT version, and that the real ``trt.Weights`` carries the arrays the refit
passes (fp32 and fp16), not that an engine refits on a GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from crnet.engines.build_settings import BuildSettings, EngineBuildError, adaptable_weights
from crnet.runtime.adapter import Adapter, adaptable_tensors, bundle_identity, graph_overrides
from crnet.runtime.backends.base import BackendError
from crnet.runtime.bundle import Bundle
from tests.trt_api_scan import scan
from tests.trt_bindings import Environment, run_json


class NetworkMarkingDouble:
    """trt.INetworkDefinition: records mark_weights_refittable; names in ``refuse`` fail."""

    helpers = ("get_input",)
    num_inputs = 0

    def __init__(self, refuse: tuple[str, ...] = ()) -> None:
        self.refuse = refuse
        self.marked: list[str] = []

    def get_input(self, index: int) -> Any:
        raise IndexError(index)

    def mark_weights_refittable(self, name: str) -> bool:
        self.marked.append(name)
        return name not in self.refuse


class RefitterRecordingDouble:
    """trt.Refitter: records set_named_weights and, at refit_cuda_engine (the moment
    TensorRT reads them), a copy of each weight's values; ``missing`` are asked for
    before the refit; refit_cuda_engine answers ``refit_ok``."""

    def __init__(self, missing: tuple[str, ...] = (), refit_ok: bool = True,
                 refuse: tuple[str, ...] = ()) -> None:
        self.missing, self.refit_ok, self.refuse = list(missing), refit_ok, refuse
        self.set: dict[str, Any] = {}
        self.at_refit: dict[str, np.ndarray] = {}
        self.refits = 0

    def set_named_weights(self, name: str, weights: Any) -> bool:
        self.set[name] = weights
        return name not in self.refuse

    def get_missing_weights(self) -> list[str]:
        return [name for name in self.missing if name not in self.set]

    def refit_cuda_engine(self) -> bool:
        self.refits += 1
        self.at_refit = {name: np.array(getattr(weights, "numpy", lambda w=weights: w)())
                         for name, weights in self.set.items()}
        return self.refit_ok


DOUBLES = {NetworkMarkingDouble: "INetworkDefinition", RefitterRecordingDouble: "Refitter"}


def fake_trt(refitter: RefitterRecordingDouble) -> Any:
    """The part of the tensorrt module refit_named_weights uses; Weights keeps the array."""
    return SimpleNamespace(Refitter=lambda engine, logger: refitter,
                           Weights=lambda array: array)


def test_scan_sees_the_refit_calls() -> None:
    """The calls the real-bindings scan checks (tests/engines/test_trt_real_bindings.py)
    include every refit call of the build and the backend."""
    found = {(a.root, ".".join(a.path)) for a in scan()}
    for expected in [("trt", "BuilderFlag.REFIT_INDIVIDUAL"),
                     ("trt.INetworkDefinition", "mark_weights_refittable"),
                     ("trt", "Refitter"), ("trt", "Weights"),
                     ("trt.Refitter", "set_named_weights"),
                     ("trt.Refitter", "get_missing_weights"),
                     ("trt.Refitter", "refit_cuda_engine")]:
        assert expected in found, expected


def test_adaptable_weights_of_each_graph(tiny_bundle: Path, tmp_path: Path) -> None:
    record = adaptable_tensors(Bundle.load(tiny_bundle))
    assert set(adaptable_weights(tiny_bundle / "refine.fp32.onnx")) == set(record)
    assert adaptable_weights(tiny_bundle / "backbone.fp32.onnx") == ()
    other = tmp_path / "refine.fp32.onnx"
    other.write_bytes((tiny_bundle / "refine.fp32.onnx").read_bytes())
    assert adaptable_weights(other) == ()  # not in a bundle
    settings = BuildSettings(onnx=tiny_bundle / "refine.fp32.onnx", engine=tmp_path / "p",
                             refit_weights=("a",))
    assert settings.refittable_weights() == ("a",)


def test_configure_marks_only_the_adaptable_weights() -> None:
    from crnet.engines import engine_trt
    from tests.trt_doubles import FakeBuilderDouble

    trt = SimpleNamespace(BuilderFlag=SimpleNamespace(REFIT_INDIVIDUAL="RI", REFIT="R"),
                          ProfilingVerbosity=SimpleNamespace(DETAILED=1), __version__="10.x")
    settings = BuildSettings(onnx=Path("refine.fp32.onnx"), engine=Path("p"),
                             refit_weights=("w1", "w2"))
    network = NetworkMarkingDouble()
    config = engine_trt._configure(trt, FakeBuilderDouble(), network, settings, [])
    assert network.marked == ["w1", "w2"] and config.flags == ["RI"]
    with pytest.raises(EngineBuildError, match="could not mark 1 adaptable weights"):
        engine_trt._configure(trt, FakeBuilderDouble(), NetworkMarkingDouble(("w2",)),
                              settings, [])
    old = SimpleNamespace(BuilderFlag=SimpleNamespace(), __version__="8.6",
                          ProfilingVerbosity=SimpleNamespace(DETAILED=1))
    with pytest.raises(EngineBuildError, match="needs 10.0 or newer"):
        engine_trt._configure(old, FakeBuilderDouble(), NetworkMarkingDouble(), settings, [])


def test_refit_sets_values_and_fills_what_tensorrt_asks_for() -> None:
    from crnet.runtime.backends.tensorrt_backend import refit_named_weights

    values = {"w": np.ones((2, 3), np.float16)}
    shipped = {"b": np.zeros(2, np.float32)}
    refitter = RefitterRecordingDouble(missing=("w", "b"))
    count = refit_named_weights(fake_trt(refitter), None, None, values, shipped.__getitem__,
                                "refine.fp16.plan")
    assert count == 2 and refitter.refits == 1
    np.testing.assert_array_equal(refitter.set["w"], values["w"])
    np.testing.assert_array_equal(refitter.set["b"], shipped["b"])
    for double, message in ((RefitterRecordingDouble(refuse=("w",)), "refused the weights w"),
                            (RefitterRecordingDouble(refit_ok=False), "could not refit")):
        with pytest.raises(BackendError, match=message):
            refit_named_weights(fake_trt(double), None, None, values, shipped.__getitem__,
                                "refine.fp16.plan")


def _backend(bundle_root: Path, refittable: list[str]) -> Any:
    """A TensorRTBackend past activation, its refine runner a stand-in (no GPU)."""
    from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

    backend = TensorRTBackend.__new__(TensorRTBackend)
    backend.bundle, backend.precision, backend.logger = Bundle.load(bundle_root), "fp32", None
    backend.engine_info = {"refine": {"builder": {"refittable_weights": refittable}}}
    dropped: list[int] = []
    backend.runners = {"refine": SimpleNamespace(  # type: ignore[dict-item]
        engine=None, plan=Path("refine.fp32.plan"), _drop_graph=lambda: dropped.append(1))}
    backend.adapter, backend._refitted, backend._shipped = None, set(), {}
    backend.dropped = dropped
    return backend


def test_backend_refits_the_adapter_and_restores_the_shipped_weights(tiny_bundle: Path
                                                                     ) -> None:
    import onnx
    from onnx import numpy_helper

    bundle = Bundle.load(tiny_bundle)
    record = adaptable_tensors(bundle)
    backend = _backend(tiny_bundle, sorted(record))
    name = next(n for n in record if n.endswith("classifier.weight"))
    adapter = Adapter({name: np.full(record[name]["shape"], 0.5, np.float32)},
                      bundle_identity(bundle))
    refitter = RefitterRecordingDouble()
    backend._refit(fake_trt(refitter), adapter)
    assert list(refitter.set) == [name] and backend.dropped == [1]
    np.testing.assert_array_equal(refitter.set[name], adapter.tensors[name])
    restore = RefitterRecordingDouble()
    backend._refit(fake_trt(restore), None)  # the shipped value goes back
    graph = onnx.load(str(tiny_bundle / "refine.fp32.onnx")).graph
    shipped = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == name)
    np.testing.assert_array_equal(restore.set[name], shipped)
    assert backend._refitted == set()
    untouched = RefitterRecordingDouble()
    backend._refit(fake_trt(untouched), None)
    assert untouched.set == {} and untouched.refits == 0


def test_plan_without_refittable_weights_asks_for_a_rebuild(tiny_bundle: Path) -> None:
    bundle = Bundle.load(tiny_bundle)
    record = adaptable_tensors(bundle)
    name = sorted(record)[0]
    adapter = Adapter({name: np.zeros(record[name]["shape"], np.float32)},
                      bundle_identity(bundle))
    with pytest.raises(BackendError, match="built without refittable adaptable weights"):
        _backend(tiny_bundle, [])._refit(fake_trt(RefitterRecordingDouble()), adapter)
    overrides = graph_overrides(
        __import__("onnx").load(str(tiny_bundle / "refine.fp32.onnx")).graph, adapter.tensors)
    assert list(overrides) == [name]


REAL_CONFIGURE = r"""
import json, sys
from pathlib import Path
import numpy as np
import tensorrt as trt
from crnet.engines import engine_trt
from crnet.engines.build_settings import BuildSettings
from crnet.runtime.backends.tensorrt_backend import refit_named_weights
from tests.engines.test_refit import NetworkMarkingDouble, RefitterRecordingDouble
from tests.trt_doubles import FakeBuilderDouble

settings = BuildSettings(onnx=Path("refine.fp16.onnx"), engine=Path("refine.fp16.plan"),
                         refit_weights=("w", "b"))
network = NetworkMarkingDouble()
config = engine_trt._configure(trt, FakeBuilderDouble(), network, settings, [])
refitter = RefitterRecordingDouble(missing=("b",))
module = type("M", (), {"Refitter": staticmethod(lambda e, l: refitter),
                        "Weights": trt.Weights})
values = {"w": np.arange(6, dtype=np.float16).reshape(2, 3)}
refit_named_weights(module, None, None, values, lambda n: np.ones(2, np.float32), "p")
probe = np.arange(3, dtype=np.float32)
print(json.dumps({
    "numpy_view_works": np.asarray(trt.Weights(probe).numpy()).tolist() == [0, 1, 2],
    "flags": [str(f) for f in config.flags],
    "individual": str(trt.BuilderFlag.REFIT_INDIVIDUAL), "marked": network.marked,
    "weights": {n: [str(w.dtype), int(w.size), refitter.at_refit[n].tolist()]
                for n, w in refitter.set.items()},
}))
"""


@pytest.mark.trt_bindings
def test_build_and_refit_against_the_real_bindings(real_tensorrt: Environment) -> None:
    facts = run_json(REAL_CONFIGURE, [real_tensorrt])
    assert facts["flags"] == [facts["individual"]]
    assert facts["marked"] == ["w", "b"]
    assert facts["weights"]["w"][:2] == ["DataType.HALF", 6]
    assert facts["weights"]["b"][:2] == ["DataType.FLOAT", 2]
    if facts["numpy_view_works"]:  # Weights.numpy() of 10.8 over the stubs reads zeros
        assert facts["weights"]["w"][2] == [0, 1, 2, 3, 4, 5]
        assert facts["weights"]["b"][2] == [1.0, 1.0]


OVERLOADS = r"""
import json, sys
import tensorrt as trt
wanted = json.loads(sys.argv[1])
answer = {}
for cls, methods in wanted.items():
    answer[cls] = {}
    for method in methods:
        function = getattr(getattr(trt, cls), method, None)
        lines = [] if function is None else (function.__doc__ or "").splitlines()
        heads = [line.split(". ", 1)[-1] for line in lines
                 if line.strip().startswith(method + "(") or
                 (line[:1].isdigit() and (". " + method + "(") in line)]
        signatures = []
        for head in heads:
            if ") ->" not in head:
                continue  # "name(*args, **kwargs)": the overloads follow, numbered
            inside = head[head.index("(") + 1:head.rindex(") ->")]
            names = [p.split(":")[0].strip() for p in inside.split(", ") if p.strip()]
            signatures.append([n for n in names if n != "self"])
        answer[cls][method] = signatures
print(json.dumps(answer))
"""


@pytest.mark.trt_bindings
def test_doubles_match_a_real_signature(real_tensorrt: Environment) -> None:
    import inspect

    wanted: dict[str, list[str]] = {}
    mine: dict[str, dict[str, list[str]]] = {}
    for double, real in DOUBLES.items():
        helpers = getattr(double, "helpers", ())
        methods = {name: list(inspect.signature(member).parameters)[1:]
                   for name, member in vars(double).items()
                   if callable(member) and not name.startswith("_") and name not in helpers}
        wanted[real], mine[real] = list(methods), methods
    real_signatures = run_json(OVERLOADS, [real_tensorrt], args=[json.dumps(wanted)])
    for cls, methods in mine.items():
        for method, parameters in methods.items():
            assert parameters in real_signatures[cls][method], (
                cls, method, parameters, real_signatures[cls][method])
