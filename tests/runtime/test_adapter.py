"""runtime.adapter: the adapter files (numpy safetensors + JSON), their checks against a
bundle, and the export's record of the adaptable tensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.runtime.adapter import (
    Adapter,
    AdapterError,
    adaptable_tensors,
    adapter_paths,
    bundle_identity,
    load_adapter,
    save_adapter,
)
from crnet.runtime.bundle import Bundle


def make_adapter(bundle: Bundle, seed: int = 0, scale: float = 0.5,
                 parts: tuple[str, ...] = ("refinement",)) -> Adapter:
    """The bundle's shipped weights of ``parts``, perturbed with seeded noise (what a
    finetune changes), as an adapter for ``bundle``."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(bundle.graph_path("refine", "fp32"))).graph
    shipped = {item.name: numpy_helper.to_array(item) for item in graph.initializer}
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, record in adaptable_tensors(bundle).items():
        if record["part"] in parts:
            base = shipped[name].astype(np.float32)
            noise = rng.normal(0.0, scale * float(np.abs(base).mean()), base.shape)
            tensors[name] = (base + noise).astype(np.float32)
    return Adapter(tensors, bundle_identity(bundle), {"seed": seed, "parts": list(parts)})


@pytest.fixture(scope="module")
def bundle(runtime_bundle: Path) -> Bundle:
    return Bundle.load(runtime_bundle)


@pytest.fixture
def adapter(bundle: Bundle) -> Adapter:
    return make_adapter(bundle)


def test_export_records_every_adaptable_tensor_as_a_named_initializer(bundle: Bundle) -> None:
    import onnx

    graph = onnx.load(str(bundle.graph_path("refine", "fp32"))).graph
    initializers = {item.name: list(item.dims) for item in graph.initializer}
    record = adaptable_tensors(bundle)
    parts = {entry["part"] for entry in record.values()}
    assert parts == {"cross_reference", "condition", "refinement"}
    for name, entry in record.items():
        assert initializers[name] == entry["shape"], name
        assert name == "model." + entry["torch_name"]
    from crnet.runtime.files import sha256_file

    assert bundle_identity(bundle)["refine_sha256"] == sha256_file(
        bundle.graph_path("refine", "fp32"))


def test_round_trip_keeps_tensors_identity_and_settings(tmp_path: Path, bundle: Bundle,
                                                        adapter: Adapter) -> None:
    weights = save_adapter(tmp_path / "shop", adapter)
    assert weights == tmp_path / "shop.safetensors"
    assert (tmp_path / "shop.json").is_file()
    for name in (weights, tmp_path / "shop.json", tmp_path / "shop"):
        loaded = load_adapter(name, bundle)
        assert loaded.identity == adapter.identity
        assert loaded.settings == adapter.settings
        assert sorted(loaded.tensors) == sorted(adapter.tensors)
        for key, tensor in adapter.tensors.items():
            np.testing.assert_array_equal(loaded.tensors[key], tensor)
            assert loaded.tensors[key].dtype == np.float32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shop.json", "shop.safetensors"]


def test_file_is_standard_safetensors(tmp_path: Path, adapter: Adapter) -> None:
    from safetensors.numpy import load_file

    read = load_file(str(save_adapter(tmp_path / "a.safetensors", adapter)))
    assert sorted(read) == sorted(adapter.tensors)
    for key, tensor in adapter.tensors.items():
        np.testing.assert_array_equal(read[key], tensor)


def test_tampered_weights_fail_the_hash_check(tmp_path: Path, adapter: Adapter) -> None:
    weights = save_adapter(tmp_path / "a", adapter)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(AdapterError, match="does not match a.json: sha256"):
        load_adapter(weights)


def test_adapter_for_another_bundle_is_refused(tmp_path: Path, bundle: Bundle,
                                               adapter: Adapter) -> None:
    for key in ("checkpoint_sha256", "refine_sha256"):
        other = Adapter(adapter.tensors, {**adapter.identity, key: "0" * 64}, {})
        save_adapter(tmp_path / key, other)
        load_adapter(tmp_path / key)  # readable on its own
        with pytest.raises(AdapterError, match=f"made for another bundle: its {key}"):
            load_adapter(tmp_path / key, bundle)


def test_unknown_missing_and_misshapen_tensors_are_refused(tmp_path: Path, bundle: Bundle,
                                                           adapter: Adapter) -> None:
    name, tensor = next(iter(adapter.tensors.items()))
    cases = {
        "extra": ({**adapter.tensors, "model.backbone.conv.weight": tensor},
                  "does not let adapters replace"),
        "shape": ({name: tensor.reshape(-1)}, "expected float32"),
        "empty": ({}, "holds no tensors"),
    }
    for label, (tensors, message) in cases.items():
        with pytest.raises(AdapterError, match=message):
            if label == "empty":
                from crnet.runtime.adapter import check_adapter

                check_adapter(Adapter({}, adapter.identity), bundle)
            else:
                save_adapter(tmp_path / label, Adapter(tensors, adapter.identity))
                load_adapter(tmp_path / label, bundle)


def test_description_and_weights_must_agree(tmp_path: Path, adapter: Adapter) -> None:
    weights, description = adapter_paths(save_adapter(tmp_path / "a", adapter))
    payload = json.loads(description.read_text())
    first = next(iter(payload["tensors"]))
    del payload["tensors"][first]
    description.write_text(json.dumps(payload))
    with pytest.raises(AdapterError, match="lists tensors"):
        load_adapter(weights)
    description.unlink()
    with pytest.raises(AdapterError, match="not found"):
        load_adapter(weights)
    save_adapter(tmp_path / "b", adapter).unlink()
    with pytest.raises(AdapterError, match="weights .* not found"):
        load_adapter(tmp_path / "b")


def test_bad_files_give_adapter_errors(tmp_path: Path, adapter: Adapter) -> None:
    weights, description = adapter_paths(save_adapter(tmp_path / "a", adapter))
    payload = json.loads(description.read_text())
    for change, message in (({"format_version": 99}, "version 99"),
                            ({"format": "other"}, "is not a crnet-adapter")):
        description.write_text(json.dumps({**payload, **change}))
        with pytest.raises(AdapterError, match=message):
            load_adapter(weights)
    broken = b"\xff" * 8 + b"{}"
    weights.write_bytes(broken)
    from crnet.runtime.files import sha256_file

    description.write_text(json.dumps({**payload, "weights_sha256": sha256_file(weights)}))
    with pytest.raises(AdapterError, match="header of 18446744073709551615 bytes is over "
                       "safetensors' limit of 100000000 bytes"):
        load_adapter(weights)


def test_save_refuses_bad_tensors_before_writing(tmp_path: Path, adapter: Adapter) -> None:
    name, tensor = next(iter(adapter.tensors.items()))
    for tensors, message in (({name: tensor.astype(np.float64)}, "expected float32"),
                             ({name: np.full_like(tensor, np.nan)}, "NaN")):
        with pytest.raises(AdapterError, match=message):
            save_adapter(tmp_path / "a", Adapter(tensors, adapter.identity))
    with pytest.raises(AdapterError, match="identity lacks"):
        save_adapter(tmp_path / "a", Adapter(adapter.tensors, {}))
    with pytest.raises(AdapterError, match="cannot be written as JSON"):
        save_adapter(tmp_path / "a", Adapter(adapter.tensors, adapter.identity,
                                             {"device": object()}))
    assert list(tmp_path.iterdir()) == []


def test_save_is_atomic(tmp_path: Path, adapter: Adapter,
                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails while writing leaves the previous adapter whole and no temporary
    files behind."""
    save_adapter(tmp_path / "a", adapter)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = Adapter({k: v + 1 for k, v in adapter.tensors.items()}, adapter.identity)

    def fail(self: Path, data: bytes) -> int:
        self.write_text("half")  # something reached the disk, then the write failed
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_bytes", fail)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(tmp_path / "a", other)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    load_adapter(tmp_path / "a")


def test_bundle_without_record_says_to_re_export(tmp_path: Path, runtime_bundle: Path) -> None:
    copy = tmp_path / "old"
    shutil.copytree(runtime_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["adaptable"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    old = Bundle.load(copy)
    with pytest.raises(AdapterError, match="re-export it"):
        adaptable_tensors(old)
    with pytest.raises(AdapterError, match="re-export it"):
        bundle_identity(old)


APPLY_IN_PLAIN_INSTALL = """
import importlib.util, json, sys
import numpy as np
from crnet.runtime import Segmenter
bundle, adapter, arrays, out = sys.argv[1:5]
data = np.load(arrays)
segmenter = Segmenter(bundle, backend="onnxruntime")
segmenter.set_support([data["image"]], [data["mask"]], adapter=adapter)
np.save(out, segmenter.segment(data["query"]))
print(json.dumps({"torch_installed": importlib.util.find_spec("torch") is not None,
                  "torch_imported": "torch" in sys.modules,
                  "adapter": segmenter.describe()["adapter"]["settings"]}))
"""


@pytest.fixture(scope="session")
def plain_venv(tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path) -> Path:
    """The plain install (no extras, no torch), shared with tests/runtime/test_plain_install.py."""
    from tests.venvs import plain_venv as shared_plain_venv

    return shared_plain_venv(tmp_path_factory, crnet_wheel)


def test_plain_install_applies_an_adapter_saved_with_torch(
        plain_venv: Path, runtime_bundle: Path, episode: Any, tmp_path: Path) -> None:
    from crnet.runtime import Segmenter
    from tests.venvs import run

    bundle = Bundle.load(runtime_bundle)
    path = save_adapter(tmp_path / "adapter", make_adapter(bundle, seed=5))
    arrays = tmp_path / "episode.npz"
    np.savez(arrays, image=episode.support_images[0], mask=episode.support_masks[0],
             query=episode.query_image)
    out = tmp_path / "mask.npy"
    result = run([str(plain_venv / "python"), "-c", APPLY_IN_PLAIN_INSTALL,
                  str(runtime_bundle), str(path), str(arrays), str(out)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts == {"torch_installed": False, "torch_imported": False,
                     "adapter": {"seed": 5, "parts": ["refinement"]}}
    with Segmenter(runtime_bundle, backend="onnxruntime") as here:
        here.set_support([episode.support_images[0]], [episode.support_masks[0]])
        shipped = here.segment(episode.query_image)
        here.set_adapter(load_adapter(path, bundle))
        adapted = here.segment(episode.query_image)
    assert np.array_equal(np.load(out), adapted)
    assert not np.array_equal(adapted, shipped)
