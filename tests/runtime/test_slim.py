"""`crnet bundle slim`: a bundle cut to one precision on one backend (runtime/slim.py).

The source is the session's int8 bundle (fp32 + int8, calibration files, the checkpoint
copy) with ONNX Runtime builds of both precisions, gate records of both, and stand-in
TensorRT plans (bytes recorded the way `crnet build` records them; nothing here loads
them), so every kind of file a slim bundle keeps or leaves out is present.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.cli import main as crnet_main
from crnet.runtime import Segmenter
from crnet.runtime.bundle import Bundle, BundleError, record_gates, update_manifest
from crnet.runtime.slim import slim_bundle
from tests.venvs import plain_venv as shared_plain_venv
from tests.venvs import run

INT8_FOR_ORT = {"backbone.int8.onnx", "refine.int8.onnx", "engines/ort/backbone.int8.onnx",
                "engines/ort/refine.int8.onnx", "golden.npz"}


@pytest.fixture(scope="module")
def full_bundle(int8_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the int8 bundle with ORT builds, gates and stand-in TensorRT plans."""
    from crnet.engines.engine_ort import build_ort_bundle

    root = tmp_path_factory.mktemp("slim-source") / "bundle"
    shutil.copytree(int8_bundle, root)
    build_ort_bundle(root, "all", log=lambda *_: None)
    record_gates(root, [{"precision": precision, "backend": "onnxruntime", "passed": True,
                         "delta_miou": 0.1, "max_abs_delta_miou": 1.0, "episodes": 4}
                        for precision in ("fp32", "int8")])
    plans = []
    for precision in ("fp32", "int8"):
        for graph in ("backbone", "refine"):
            for suffix in ("plan", "json", "layers.json"):
                name = f"engines/{graph}.{precision}.{suffix}"
                (root / name).write_bytes(f"{name} stand-in".encode())
                plans.append(name)

    def record(manifest: dict[str, Any]) -> None:
        manifest["engines"] = {precision: {graph: {
            "plan": f"engines/{graph}.{precision}.plan",
            "json": f"engines/{graph}.{precision}.json"} for graph in ("backbone", "refine")}
            for precision in ("fp32", "int8")}

    update_manifest(root, record, added_files=plans)
    return root


@pytest.fixture(scope="module")
def slim_int8(full_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slim") / "int8"
    assert crnet_main(["bundle", "slim", str(full_bundle), "--precision", "int8",
                       "--backend", "onnxruntime", "--out", str(out)]) == 0
    return out


def strings(value: Any) -> set[str]:
    """Every string inside a JSON value."""
    if isinstance(value, dict):
        return set().union(*(strings(item) for item in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(strings(item) for item in value)) if value else set()
    return {value} if isinstance(value, str) else set()


def on_disk(root: Path) -> set[str]:
    return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


def episode_masks(root: Path, precision: str, episode) -> np.ndarray:  # noqa: ANN001
    with Segmenter(root, backend="onnxruntime", precision=precision, threads=1) as segmenter:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        return segmenter.segment(episode.query_image)


def test_slim_int8_bundle_holds_only_its_files_and_verifies(
        full_bundle: Path, slim_int8: Path, episode) -> None:  # noqa: ANN001
    manifest = json.loads((slim_int8 / "manifest.json").read_text())
    assert set(manifest["files"]) == INT8_FOR_ORT
    assert on_disk(slim_int8) == INT8_FOR_ORT | {"manifest.json"}
    assert list(manifest["variants"]) == ["int8"] and list(manifest["gates"]) == ["int8"]
    assert list(manifest["ort_builds"]) == ["int8"]
    assert "engines" not in manifest and "checkpoint" not in manifest
    source = json.loads((full_bundle / "manifest.json").read_text())
    removed = set(source["files"]) - INT8_FOR_ORT
    assert manifest["slim"]["removed"] == sorted(removed)
    assert "calibration/ranges.int8.json" in removed and "checkpoint.safetensors" in removed
    outside = {key: value for key, value in manifest.items() if key != "slim"}
    assert not strings(outside) & removed  # nothing names a file that is not there
    assert manifest["slim"]["dropped_sections"] == ["lint"]  # it lists the fp32 graphs
    for name in INT8_FOR_ORT:
        assert manifest["files"][name] == source["files"][name]

    bundle = Bundle.load(slim_int8, verify=True)
    assert bundle.precisions == ["int8"] and bundle.gate_results("int8")
    assert np.array_equal(episode_masks(slim_int8, "int8", episode),
                          episode_masks(full_bundle, "int8", episode))
    with Segmenter(slim_int8, backend="auto", precision="int8") as segmenter:
        assert segmenter.precision == "int8"


def test_slim_bundle_reports_sizes_and_refuses_a_removed_precision(
        full_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "slim"
    assert crnet_main(["bundle", "slim", str(full_bundle), "--precision", "int8",
                       "--backend", "onnxruntime", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept     backbone.int8.onnx" in printed
    assert "left out checkpoint.safetensors" in printed
    size_line = next(line for line in printed.splitlines() if line.startswith("size: "))
    assert " -> " in size_line and size_line.endswith("verified")
    with pytest.raises(BundleError, match=r"no fp32 variant \(has \['int8'\]\).*bundle slim"):
        Segmenter(out, backend="onnxruntime", precision="fp32")
    assert crnet_main(["bundle", "verify", str(out)]) == 0
    assert "precisions int8; slimmed for int8 on onnxruntime" in capsys.readouterr().out
    (out / "refine.int8.onnx").write_bytes(b"tampered")
    assert crnet_main(["bundle", "verify", str(out)]) == 1
    assert "does not match the manifest" in capsys.readouterr().err


@pytest.mark.parametrize(("backend", "keep_checkpoint", "expected"), [
    ("tensorrt", False, {"backbone.int8.onnx", "refine.int8.onnx", "golden.npz",
                         *(f"engines/{graph}.int8.{suffix}" for graph in ("backbone", "refine")
                           for suffix in ("plan", "json", "layers.json"))}),
    ("openvino", True, {"backbone.int8.onnx", "refine.int8.onnx", "checkpoint.safetensors",
                        "checkpoint.json", "golden.npz"}),
    ("auto", False, INT8_FOR_ORT | {f"engines/{graph}.int8.{suffix}"
                                    for graph in ("backbone", "refine")
                                    for suffix in ("plan", "json", "layers.json")}),
])
def test_each_backend_keeps_what_it_loads(full_bundle: Path, tmp_path: Path, backend: str,
                                          keep_checkpoint: bool, expected: set[str]) -> None:
    result = slim_bundle(full_bundle, tmp_path / "out", "int8", backend,
                         keep_checkpoint=keep_checkpoint)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert set(manifest["files"]) == expected == on_disk(tmp_path / "out") - {"manifest.json"}
    assert ("engines" in manifest) == (backend in ("tensorrt", "auto"))
    assert ("ort_builds" in manifest) == (backend in ("onnxruntime", "auto"))
    assert ("checkpoint" in manifest) == keep_checkpoint
    assert result.size_after == sum(result.kept.values()) < result.size_before
    Bundle.load(tmp_path / "out", verify=True)


def test_slim_is_atomic_and_refuses_what_it_cannot_do(
        full_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import crnet.runtime.slim as slim

    out = tmp_path / "out"
    copies: list[str] = []
    real_copy = slim._copy_checked

    def failing_copy(source: Path, work: Path, name: str, digest: str) -> None:
        if copies:
            raise OSError("disk full")
        copies.append(name)
        real_copy(source, work, name, digest)

    monkeypatch.setattr(slim, "_copy_checked", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        slim_bundle(full_bundle, out, "int8", "onnxruntime")
    assert copies and list(tmp_path.iterdir()) == []  # no bundle, no temporary left
    monkeypatch.undo()

    corrupt = tmp_path / "corrupt"
    shutil.copytree(full_bundle, corrupt)
    (corrupt / "backbone.int8.onnx").write_bytes(b"not the graph")
    with pytest.raises(BundleError, match="backbone.int8.onnx does not match the manifest"):
        slim_bundle(corrupt, out, "int8")
    assert not out.exists()

    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(full_bundle, fp32_only)
    update_manifest(fp32_only, lambda manifest: manifest["variants"].pop("int8"))
    with pytest.raises(BundleError, match=r"no int8 variant \(it holds \['fp32'\]\)"):
        slim_bundle(fp32_only, out, "int8")
    with pytest.raises(BundleError, match="inside the source bundle"):
        slim_bundle(full_bundle, full_bundle / "slim", "int8")
    with pytest.raises(BundleError, match="torch backend runs the checkpoint"):
        slim_bundle(full_bundle, out, "int8", "torch")
    out.mkdir()
    (out / "keep.txt").write_text("someone's file")
    with pytest.raises(BundleError, match="already exists"):
        slim_bundle(full_bundle, out, "int8")
    assert on_disk(out) == {"keep.txt"}


SEGMENT_SLIM = """
import json, sys
import numpy as np
from crnet.runtime import Segmenter
from crnet.runtime.bundle import Bundle
bundle, out = sys.argv[1], sys.argv[2]
image = np.zeros((90, 120, 3), np.uint8)
image[20:60, 30:90] = (200, 40, 40)
mask = np.zeros((90, 120), np.uint8)
mask[20:60, 30:90] = 1
loaded = Bundle.load(bundle, verify=True)
seg = Segmenter(bundle, backend="onnxruntime", precision="int8", threads=1)
seg.set_support([image], [mask])
np.save(out, seg.segment(image))
print(json.dumps({"precisions": loaded.precisions, "torch": "torch" in sys.modules}))
"""


def test_plain_install_loads_verifies_and_segments_the_slim_bundle(
        slim_int8: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory,
        crnet_wheel: Path) -> None:
    venv = shared_plain_venv(tmp_path_factory, crnet_wheel)
    verified = run([str(venv / "crnet"), "bundle", "verify", str(slim_int8)], cwd=tmp_path)
    assert verified.returncode == 0, verified.stderr[-3000:]
    assert "precisions int8" in verified.stdout
    out = tmp_path / "mask.npy"
    result = run([str(venv / "python"), "-c", SEGMENT_SLIM, str(slim_int8), str(out)],
                 cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"precisions": ["int8"],
                                                                   "torch": False}
    image = np.zeros((90, 120, 3), np.uint8)
    image[20:60, 30:90] = (200, 40, 40)
    mask = np.zeros((90, 120), np.uint8)
    mask[20:60, 30:90] = 1
    with Segmenter(slim_int8, backend="onnxruntime", precision="int8", threads=1) as here:
        here.set_support([image], [mask])
        assert np.array_equal(np.load(out), here.segment(image))


def test_bench_on_a_slim_bundle_leaves_torch_out_unless_asked(
        slim_int8: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main as crnet_main

    arguments = ["bench", str(slim_int8), "--backend", "onnxruntime", "--precision", "int8",
                 "--iterations", "2", "--warmup", "0", "--threads", "1", "--no-progress"]
    assert crnet_main(arguments) == 0  # torch is installed here, the checkpoint is not
    assert "vs torch" not in capsys.readouterr().out
    assert crnet_main([*arguments, "--compare-torch"]) == 1
    assert "--keep-checkpoint" in capsys.readouterr().err
