"""The plain install's dependency floors (pyproject.toml) really work.

For each Python the metadata claims (3.10, 3.11, 3.12; one not on this machine is skipped,
with the reason), a fresh venv gets crnet-deploy's wheel installed under
constraints-floors.txt, the lowest numpy, onnx and onnxruntime pyproject.toml allows. A
script there runs the runtime's checks on a bundle exported here with fp32, fp16 and int8
variants: ``Segmenter`` on every CPU variant, the fused query graph (backbone chained to
the refine graph cut to ``query_logits``) against the two separate graphs, the int8
graphs' uint8 activation rewrite against the graphs as exported, and that
``session.force_spinning_stop`` stops the workers spinning after a run. It prints the
versions it ran; the test compares them with the floors, so a floors job that silently
ran newer releases fails. Slow (a venv per Python, about a minute each with pip's cache
warm): .ci/run runs it explicitly with ``-m slow``.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.version import Version

from tests.venvs import ROOT, run

PYTHONS = ("3.10", "3.11", "3.12")
FLOORED = ("numpy", "onnx", "onnxruntime")
CONSTRAINTS = ROOT / "constraints-floors.txt"

CHECKS = """
import json, sys, time
import numpy as np
import onnx, onnxruntime
from crnet.runtime import Segmenter
from crnet.runtime.backends import backend_class
from crnet.runtime.bundle import Bundle

bundle_dir, out = sys.argv[1], sys.argv[2]
print("onnxruntime.__version__ =", onnxruntime.__version__, file=sys.stderr)
facts = {"python": "%d.%d" % sys.version_info[:2], "onnxruntime": onnxruntime.__version__,
         "onnx": onnx.__version__, "numpy": np.__version__,
         "runtime_file": sys.modules["crnet.runtime"].__file__, "variants": {}}
bundle = Bundle.load(bundle_dir)
rng = np.random.default_rng(0)
images = rng.standard_normal((2, 3, *bundle.manifest["input_size"]), dtype=np.float32)
mask = np.zeros((1, 1, *bundle.manifest["feature_size"]), np.float32)
mask[..., 1:5, 1:5] = 1.0
image = np.zeros((90, 120, 3), np.uint8)
image[20:60, 30:90] = (200, 40, 40)
label = np.zeros((90, 120), np.uint8)
label[20:60, 30:90] = 1
masks = {}
onnxruntime_backend = backend_class("onnxruntime")
for precision in ("fp32", "fp16", "int8"):
    with onnxruntime_backend(bundle, precision, threads=1) as backend:
        info = backend.describe()
        feat = backend.run_backbone(images)
        query_logits, _ = backend.run_refine(feat[:1], feat[1:], mask)
        fused = backend.run_query(images[:1], feat[1:], mask)
        entry = {"query_refine": info.get("query_refine"),
                 "int8_activations": info.get("int8_activations"),
                 "fused_vs_graphs": float(np.abs(fused - query_logits).max())}
    if precision == "int8":
        with onnxruntime_backend(bundle, precision, threads=1,
                                 uint8_activations=False) as backend:
            as_exported = backend.run_query(images[:1], backend.run_backbone(images)[1:], mask)
        entry["uint8_vs_int8"] = float(np.abs(as_exported - fused).max())
    segmenter = Segmenter(bundle_dir, backend="onnxruntime", precision=precision, threads=1)
    segmenter.set_support([image], [label])
    masks[precision] = segmenter.segment(image)
    entry["backend"] = segmenter.backend_name
    segmenter.close()
    facts["variants"][precision] = entry
np.savez(out, **masks)


def idle_cpu_ms(stop):
    # CPU time the process burns in 0.2 s of idling after a run (median of 8 runs)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "1")
    if stop:
        options.add_session_config_entry("session.force_spinning_stop", "1")
    session = onnxruntime.InferenceSession(str(bundle.graph_path("backbone", "fp32")),
                                           options, providers=["CPUExecutionProvider"])
    burnt = []
    for _ in range(8):
        session.run(None, {"image": images[:1]})
        start = time.process_time()
        time.sleep(0.2)
        burnt.append(time.process_time() - start)
    return float(np.median(burnt)) * 1000


facts["idle_cpu_ms"] = {"force_spinning_stop": idle_cpu_ms(True), "spinning": idle_cpu_ms(False)}
print(json.dumps(facts))
"""


def interpreter(version: str) -> str | None:
    """A CPython ``version`` interpreter on this machine: this one, one on PATH, or a pyenv
    build; None when there is none."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    found = shutil.which(f"python{version}")
    if found and run([found, "--version"], cwd=ROOT, timeout=60).returncode == 0:
        return found
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    builds = sorted(glob.glob(str(root / "versions" / f"{version}.*" / "bin" / "python")))
    return builds[-1] if builds else None


def declared_floors(python: str) -> dict[str, Version]:
    """The ``>=`` bound of each plain dependency in pyproject.toml, for Python ``python``."""
    import tomllib  # Python 3.11+, as the test environment is

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    environment = {**default_environment(), "python_version": python,
                   "python_full_version": f"{python}.0"}
    floors = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (bound,) = [spec.version for spec in requirement.specifier if spec.operator == ">="]
            floors[requirement.name] = Version(bound)
    return floors


def constrained_versions(python: str) -> dict[str, Version]:
    """The ``==`` pins of constraints-floors.txt that apply to Python ``python``."""
    environment = {**default_environment(), "python_version": python,
                   "python_full_version": f"{python}.0"}
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate(environment):
            (pin,) = [spec.version for spec in requirement.specifier if spec.operator == "=="]
            pins[requirement.name] = Version(pin)
    return pins


@pytest.mark.parametrize("python", PYTHONS)
def test_constraints_pin_exactly_the_declared_floors(python: str) -> None:
    floors = declared_floors(python)
    assert set(FLOORED) <= set(floors)
    assert constrained_versions(python) == {name: floors[name] for name in FLOORED}


def test_the_floor_comparison_can_fail(tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    raised = tmp_path / "constraints-floors.txt"
    raised.write_text(CONSTRAINTS.read_text().replace("onnxruntime==", "onnxruntime==9"))
    monkeypatch.setattr(sys.modules[__name__], "CONSTRAINTS", raised)
    assert constrained_versions("3.11")["onnxruntime"] != declared_floors("3.11")["onnxruntime"]


def test_an_onnx_too_old_to_chain_runs_the_graphs_separately(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    from crnet.runtime.backends import backend_class
    from crnet.runtime.bundle import Bundle
    from tests.venvs import tiny_bundle

    bundle = Bundle.load(tiny_bundle(tmp_path_factory))
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, *bundle.manifest["input_size"]), dtype=np.float32)
    mask = np.ones((1, 1, *bundle.manifest["feature_size"]), np.float32)
    backend_type = backend_class("onnxruntime")
    with backend_type(bundle, "fp32", threads=1) as backend:
        assert backend.describe()["query_refine"]["chained"] == "yes"
        feat = backend.run_backbone(images)
        chained = backend.run_query(images[:1], feat[1:], mask)
    monkeypatch.setattr(onnx, "__version__", "1.18.0")
    with backend_type(bundle, "fp32", threads=1) as backend:
        info = backend.describe()["query_refine"]
        assert info["pruned"] and "query" not in backend.sessions
        assert info["chained"].startswith("no (onnx 1.18.0 cannot chain the graphs"), info
        np.testing.assert_allclose(backend.run_query(images[:1], feat[1:], mask), chained,
                                   rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def floors_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny bundle with decisive masks and fp32, fp16 and int8 variants, made with the
    project's own export and calibration in this (full) environment."""
    from crnet.calibration.fp16 import quantize_fp16
    from crnet.calibration.options import Fp16Options
    from tests.runtime.bundles import export_int8_bundle

    bundle = export_int8_bundle(tmp_path_factory.mktemp("floors"))
    quantize_fp16(bundle, Fp16Options(check_episodes=2, progress=False))
    return bundle


def reference_masks(bundle: Path) -> dict[str, np.ndarray]:
    """The masks this environment's onnxruntime gives for the script's image."""
    from crnet.runtime import Segmenter

    image = np.zeros((90, 120, 3), np.uint8)
    image[20:60, 30:90] = (200, 40, 40)
    label = np.zeros((90, 120), np.uint8)
    label[20:60, 30:90] = 1
    masks = {}
    for precision in ("fp32", "fp16", "int8"):
        with Segmenter(bundle, backend="onnxruntime", precision=precision,
                       threads=1) as segmenter:
            segmenter.set_support([image], [label])
            masks[precision] = segmenter.segment(image)
    return masks


@pytest.mark.slow
@pytest.mark.parametrize("python", PYTHONS)
def test_runtime_checks_pass_at_the_floors(python: str, crnet_wheel: Path,
                                           floors_bundle: Path, tmp_path: Path) -> None:
    executable = interpreter(python)
    if executable is None:
        pytest.skip(f"no Python {python} interpreter on this machine (PATH or pyenv)")
    environment = tmp_path / "venv"
    created = run([executable, "-m", "venv", str(environment)], cwd=tmp_path, timeout=300)
    assert created.returncode == 0, created.stderr[-3000:]
    python_bin = environment / "bin" / "python"
    installed = run([str(python_bin), "-m", "pip", "install", "--quiet", "--only-binary=:all:",
                     "-c", str(CONSTRAINTS), str(crnet_wheel)], cwd=tmp_path)
    assert installed.returncode == 0, installed.stderr[-3000:]

    out = tmp_path / "masks.npz"
    result = run([str(python_bin), "-c", CHECKS, str(floors_bundle), str(out)], cwd=tmp_path,
                 timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    floors = declared_floors(python)
    print(f"Python {facts['python']}: onnxruntime.__version__ {facts['onnxruntime']} "
          f"(floor {floors['onnxruntime']}), onnx {facts['onnx']} (floor {floors['onnx']}), "
          f"numpy {facts['numpy']} (floor {floors['numpy']}); idle CPU after a run "
          f"{facts['idle_cpu_ms']}")
    assert facts["python"] == python
    assert str(environment) in facts["runtime_file"]  # the wheel's copy, not this checkout
    for name in FLOORED:
        assert Version(facts[name]) == floors[name], (name, facts[name], floors[name])

    variants = facts["variants"]
    assert set(variants) == {"fp32", "fp16", "int8"}
    for precision, entry in variants.items():
        assert entry["backend"] == "onnxruntime"
        query_refine = entry["query_refine"]
        assert query_refine["pruned"] and query_refine["chained"] == "yes", (precision,
                                                                           query_refine)
        assert entry["fused_vs_graphs"] <= 1e-4, precision
    rewrite = variants["int8"]["int8_activations"]
    assert rewrite["type"] == "uint8" and sum(rewrite["rewritten"].values()) > 0, rewrite
    assert variants["int8"]["uint8_vs_int8"] <= 1e-4
    assert variants["fp32"]["int8_activations"] is None

    masks = np.load(out)
    for precision, reference in reference_masks(floors_bundle).items():
        assert masks[precision].shape == reference.shape
        assert reference.any() and not reference.all()
        assert np.mean(masks[precision] != reference) <= 0.005, precision

    idle = facts["idle_cpu_ms"]
    assert idle["force_spinning_stop"] < max(2.0, idle["spinning"] / 2), idle
