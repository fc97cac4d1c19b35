"""Bundle loading: verification that cannot be bypassed, malformed manifests, and
manifest writers that serialise (runtime.bundle)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from crnet.runtime import Segmenter
from crnet.runtime.bundle import Bundle, BundleError, is_bundle, update_manifest
from crnet.runtime.files import sha256_file
from crnet.runtime.ort_build import ort_build_path


@pytest.fixture
def bundle_copy(runtime_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the session's tiny bundle, free to tamper with."""
    return Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))


def _edit(root: Path, change: Any) -> None:
    manifest = json.loads((root / "manifest.json").read_text())
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def _zero_largest_weight(path: Path) -> None:
    """Overwrite the middle of an ONNX file (its weights) with zeros: a tampered graph."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 4096] = bytes(4096)
    path.write_bytes(bytes(data))


def test_a_graph_missing_from_files_is_refused(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda m: m["files"].pop("refine.fp32.onnx"))
    _zero_largest_weight(bundle_copy / "refine.fp32.onnx")
    with pytest.raises(BundleError, match="not listed"):
        Segmenter(bundle_copy, backend="onnxruntime")


def test_a_manifest_without_files_is_refused(bundle_copy: Path) -> None:
    _edit(bundle_copy, lambda m: m.pop("files"))
    with pytest.raises(BundleError, match="files"):
        Bundle.load(bundle_copy)


def test_a_variant_pointing_to_an_unlisted_file_is_refused(bundle_copy: Path) -> None:
    shutil.copyfile(bundle_copy / "refine.fp32.onnx", bundle_copy / "other.onnx")
    _zero_largest_weight(bundle_copy / "other.onnx")
    _edit(bundle_copy, lambda m: m["variants"]["fp32"].update(refine="other.onnx"))
    with pytest.raises(BundleError, match="not listed"):
        Segmenter(bundle_copy, backend="onnxruntime")


@pytest.mark.parametrize("escape", ["../outside.onnx", "sub/../../outside.onnx", "ABSOLUTE"])
def test_variant_paths_outside_the_bundle_are_refused(bundle_copy: Path, escape: str) -> None:
    outside = bundle_copy.parent / "outside.onnx"
    shutil.copyfile(bundle_copy / "refine.fp32.onnx", outside)
    name = str(outside) if escape == "ABSOLUTE" else escape
    digest = sha256_file(outside)
    _edit(bundle_copy, lambda m: (m["variants"]["fp32"].update(refine=name),
                                  m["files"].update({name: digest})))
    with pytest.raises(BundleError, match="outside the bundle"):
        Segmenter(bundle_copy, backend="onnxruntime")


@pytest.mark.parametrize("name", ["../../../../../../etc/passwd", "/etc/passwd"])
def test_a_files_entry_outside_the_bundle_is_never_hashed(bundle_copy: Path, name: str) -> None:
    _edit(bundle_copy, lambda m: m["files"].update({name: "0" * 64}))
    with pytest.raises(BundleError, match="outside the bundle") as raised:
        Bundle.load(bundle_copy)
    passwd = Path("/etc/passwd")
    if passwd.is_file():
        assert hashlib.sha256(passwd.read_bytes()).hexdigest() not in str(raised.value)


def test_a_symlink_out_of_the_bundle_is_refused(bundle_copy: Path) -> None:
    outside = bundle_copy.parent / "outside.onnx"
    shutil.move(bundle_copy / "refine.fp32.onnx", outside)
    (bundle_copy / "refine.fp32.onnx").symlink_to(outside)  # same bytes, same hash
    with pytest.raises(BundleError, match="outside the bundle"):
        Bundle.load(bundle_copy)


def _load_in_thread(root: Path) -> BaseException | None:
    """Bundle.load in a thread that must finish within 20 s (a FIFO would hang it)."""
    outcome: list[BaseException | None] = []

    def target() -> None:
        try:
            Bundle.load(root)
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(20)
    assert outcome, "Bundle.load hung"
    return outcome[0]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_listed_fifo_is_refused_without_hanging(bundle_copy: Path) -> None:
    os.mkfifo(bundle_copy / "pipe.bin")
    _edit(bundle_copy, lambda m: m["files"].update({"pipe.bin": "0" * 64}))
    error = _load_in_thread(bundle_copy)
    assert isinstance(error, BundleError) and "regular file" in str(error)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs (POSIX)")
def test_a_manifest_that_is_a_fifo_is_refused_without_hanging(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    os.mkfifo(bundle_copy / "manifest.json")
    error = _load_in_thread(bundle_copy)
    assert isinstance(error, BundleError) and "not a regular file" in str(error)
    assert not is_bundle(bundle_copy)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_symlink_to_dev_zero_is_refused_without_hanging(bundle_copy: Path) -> None:
    (bundle_copy / "zero.bin").symlink_to("/dev/zero")
    _edit(bundle_copy, lambda m: m["files"].update({"zero.bin": "0" * 64}))
    error = _load_in_thread(bundle_copy)
    assert isinstance(error, BundleError)


def _fake_ort_build(bundle: Path, path: str) -> None:
    digest = json.loads((bundle / "manifest.json").read_text())["files"]["refine.fp32.onnx"]
    _edit(bundle, lambda m: m.setdefault("ort_builds", {}).setdefault("fp32", {}).update(
        refine={"path": path, "source": "refine.fp32.onnx", "source_sha256": digest}))


def test_ort_build_paths_must_stay_inside_and_be_listed(bundle_copy: Path) -> None:
    shutil.copyfile(bundle_copy / "refine.fp32.onnx", bundle_copy.parent / "built.onnx")
    _fake_ort_build(bundle_copy, "../built.onnx")
    with pytest.raises(BundleError, match="outside the bundle"):
        ort_build_path(Bundle.load(bundle_copy), "refine", "fp32")
    (bundle_copy / "engines" / "ort").mkdir(parents=True)
    shutil.copyfile(bundle_copy / "refine.fp32.onnx", bundle_copy / "engines/ort/x.onnx")
    _fake_ort_build(bundle_copy, "engines/ort/x.onnx")
    with pytest.raises(BundleError, match="not listed"):
        Segmenter(bundle_copy, backend="onnxruntime")


def test_the_torch_backend_checkpoint_path_is_checked(bundle_copy: Path) -> None:
    pytest.importorskip("torch")
    shutil.copyfile(bundle_copy / "checkpoint.safetensors", bundle_copy.parent / "x.safetensors")
    _edit(bundle_copy, lambda m: m["checkpoint"].update(weights="../x.safetensors"))
    with pytest.raises(BundleError, match="outside the bundle"):
        Segmenter(bundle_copy, backend="torch")


@pytest.mark.parametrize("content", [b"[]", b"3", b"null", b"\xff\xfe{}", b"[" * 100_000,
                                     b'{"format": "crnet-deploy/bundle"}', b"{"])
def test_malformed_manifests_raise_bundle_error(bundle_copy: Path, content: bytes) -> None:
    (bundle_copy / "manifest.json").write_bytes(content)
    with pytest.raises(BundleError):
        Segmenter(bundle_copy, backend="onnxruntime")
    assert not is_bundle(bundle_copy) or content.startswith(b'{"format"')


@pytest.mark.parametrize("key", ["graphs", "variants", "feature_size", "preprocessing"])
def test_a_manifest_missing_a_key_raises_bundle_error(bundle_copy: Path, key: str) -> None:
    _edit(bundle_copy, lambda m: m.pop(key))
    with pytest.raises(BundleError, match=key):
        Segmenter(bundle_copy, backend="onnxruntime")


def test_a_manifest_that_is_a_directory_raises_bundle_error(bundle_copy: Path) -> None:
    (bundle_copy / "manifest.json").unlink()
    (bundle_copy / "manifest.json").mkdir()
    with pytest.raises(BundleError):
        Bundle.load(bundle_copy)


def test_concurrent_manifest_writers_do_not_lose_an_update(bundle_copy: Path) -> None:
    """Two writers whose read-modify-write windows overlap: both variants survive."""
    started = threading.Barrier(2)

    def writer(key: str) -> None:
        def change(manifest: dict[str, Any]) -> None:
            time.sleep(0.3)  # a writer paused inside its read-modify-write window
            manifest.setdefault("extra_reports", {})[key] = True

        started.wait()
        update_manifest(bundle_copy, change)

    threads = [threading.Thread(target=writer, args=(key,)) for key in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    assert manifest.get("extra_reports") == {"one": True, "two": True}


def test_a_manifest_change_the_schema_refuses_writes_nothing(bundle_copy: Path) -> None:
    """A writer (here ``record_gates`` with a NaN delta) cannot leave a manifest that the
    next ``Bundle.load`` would refuse: the change is refused and the file is unchanged."""
    from crnet.runtime.bundle import record_gates

    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="gates.fp32.onnxruntime.delta_miou is nan"):
        record_gates(bundle_copy, [{"precision": "fp32", "backend": "onnxruntime",
                                    "passed": True, "delta_miou": float("nan"),
                                    "max_abs_delta_miou": 1.0, "episodes": 4}])
    assert (bundle_copy / "manifest.json").read_bytes() == before
    Bundle.load(bundle_copy)


def test_a_held_lock_gives_a_clear_error(bundle_copy: Path) -> None:
    from crnet.runtime.bundle import manifest_lock
    from crnet.runtime.files import exclusive_lock

    with exclusive_lock(bundle_copy / "manifest.lock", "test"):
        failure: list[BaseException] = []

        def other() -> None:
            try:
                with exclusive_lock(bundle_copy / "manifest.lock", "quantize", timeout=0.2):
                    pass
            except BaseException as error:  # noqa: BLE001 - handed to the test
                failure.append(error)

        thread = threading.Thread(target=other)
        thread.start()
        thread.join(10)
    assert failure and isinstance(failure[0], TimeoutError)
    assert f"pid {os.getpid()}" in str(failure[0])
    with manifest_lock(bundle_copy):  # released: free again
        pass


def test_tensorrt_engine_files_must_be_listed(bundle_copy: Path) -> None:
    """The tensorrt backend loads plans and their json: unlisted ones are refused (this
    runs before TensorRT is imported, so it needs none)."""
    from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

    engines = bundle_copy / "engines"
    engines.mkdir(exist_ok=True)
    for graph in ("backbone", "refine"):
        (engines / f"{graph}.fp32.plan").write_bytes(b"plan")
        (engines / f"{graph}.fp32.json").write_text("{}")
    with pytest.raises(BundleError, match="not listed"):
        TensorRTBackend(Bundle.load(bundle_copy), "fp32")
