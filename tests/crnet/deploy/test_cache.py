"""Deploy's evaluation cache: every input names another entry, and a bad entry is not read."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crnet.deploy.cache import (
    data_fingerprint,
    decode_mask,
    encode_mask,
    entry_path,
    evaluation_inputs,
    read_entry,
    variant_files,
    write_entry,
)

MANIFEST: dict[str, Any] = {
    "format_version": 1, "model": {"name": "tiny"}, "preprocessing": {"mean": [0.5]},
    "refine_steps": 2, "input_size": [65, 65], "feature_size": [9, 9],
    "feature_channels": 16, "shots": [1, 8],
    "source_checkpoint": {"sha256": "c" * 64},
    "variants": {"fp32": {"backbone": "backbone.fp32.onnx", "refine": "refine.fp32.onnx"},
                 "fp16": {"backbone": "backbone.fp16.onnx", "refine": "refine.fp16.onnx"}},
    "files": {"backbone.fp32.onnx": "a1", "refine.fp32.onnx": "a2",
              "backbone.fp16.onnx": "b1", "refine.fp16.onnx": "b2",
              "engines/ort/backbone.fp16.onnx": "o1", "engines/ort/refine.fp16.onnx": "o2",
              "engines/ort/backbone.fp32.onnx": "o3",
              "checkpoint.safetensors": "c" * 64, "checkpoint.json": "cj"},
}
EPISODES = {"fold": 0, "shots": 1, "episodes": 3, "seed": 0, "dataset": "synthetic-5i",
            "split": "test", "data_root": None, "sampler": "uniform"}


def inputs_of(manifest: dict[str, Any] = MANIFEST, backend: str = "onnxruntime",
              version: str = "onnxruntime 1.32.0", precision: str = "fp16",
              episodes: dict[str, Any] = EPISODES) -> dict[str, Any]:
    return evaluation_inputs(manifest, backend, version, precision, episodes, 3)


def changed_manifest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(MANIFEST)
    target = manifest
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return manifest


CHANGES = {
    "backend": inputs_of(backend="openvino", version="openvino 2026.4"),
    "backend version": inputs_of(version="onnxruntime 1.33.0"),
    "precision": inputs_of(precision="fp32"),
    "fp16 graph": inputs_of(changed_manifest(("files", "refine.fp16.onnx"), "b2x")),
    "fp16 ONNX Runtime build": inputs_of(
        changed_manifest(("files", "engines/ort/backbone.fp16.onnx"), "o1x")),
    "checkpoint": inputs_of(changed_manifest(("files", "checkpoint.safetensors"), "d" * 64)),
    "source checkpoint": inputs_of(changed_manifest(("source_checkpoint", "sha256"), "e")),
    "refine steps": inputs_of(changed_manifest(("refine_steps",), 3)),
    "preprocessing": inputs_of(changed_manifest(("preprocessing", "mean"), [0.4])),
    **{f"episodes {key}": inputs_of(episodes={**EPISODES, key: value}) for key, value in (
        ("episodes", 4), ("seed", 1), ("shots", 5), ("dataset", "pascal-5i"), ("fold", 1),
        ("data_root", "/data/VOC2012"), ("sampler", "hsnet"), ("data_files", "f" * 64))},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_every_input_names_another_entry(change: str, tmp_path: Path) -> None:
    assert entry_path(tmp_path, CHANGES[change]) != entry_path(tmp_path, inputs_of())


def test_the_format_version_and_package_version_are_inputs(monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    from crnet.deploy import cache

    before = entry_path(tmp_path, inputs_of())
    monkeypatch.setattr(cache, "CACHE_FORMAT_VERSION", cache.CACHE_FORMAT_VERSION + 1)
    assert entry_path(tmp_path, inputs_of()) != before
    monkeypatch.undo()
    monkeypatch.setattr(cache, "_package_version", lambda: "99.0")
    assert entry_path(tmp_path, inputs_of()) != before


def test_unrelated_files_do_not_change_the_key(tmp_path: Path) -> None:
    """Another precision's graphs and builds, and the reference's graphs, are not inputs."""
    other = changed_manifest(("files", "backbone.fp32.onnx"), "zz")
    other["files"]["engines/ort/backbone.fp32.onnx"] = "zz"
    assert entry_path(tmp_path, inputs_of(other)) == entry_path(tmp_path, inputs_of())
    reference = inputs_of(backend="torch", version="torch 2.13", precision="fp32")
    assert entry_path(tmp_path, inputs_of(other, "torch", "torch 2.13", "fp32")) == \
        entry_path(tmp_path, reference)


def test_variant_files_are_the_graphs_and_builds_of_the_precision() -> None:
    assert variant_files(MANIFEST, "onnxruntime", "fp16") == {
        "backbone.fp16.onnx": "b1", "refine.fp16.onnx": "b2",
        "engines/ort/backbone.fp16.onnx": "o1", "engines/ort/refine.fp16.onnx": "o2"}
    assert variant_files(MANIFEST, "torch", "fp32") == {}  # it runs the checkpoint


def test_masks_round_trip() -> None:
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (7, 13), (193, 193)):
        mask = rng.random(shape) > 0.5
        assert np.array_equal(decode_mask(encode_mask(mask)), mask)


def entry_with(tmp_path: Path, inputs: dict[str, Any], pictures: int = 3) -> Path:
    path = entry_path(tmp_path, inputs)
    result = {"miou": 1.0, "fbiou": 2.0, "per_class_iou": {"1": 1.0}, "episodes": 3,
              "seconds": 0.1, "backend": "onnxruntime"}
    write_entry(path, inputs, result, [np.eye(4, dtype=bool)] * pictures)
    return path


def test_an_entry_reads_back(tmp_path: Path) -> None:
    path = entry_with(tmp_path, inputs_of())
    entry, why = read_entry(path, inputs_of(), 3)
    assert entry is not None and why == "cached"
    assert entry.result["miou"] == 1.0 and len(entry.pictures) == 3
    assert np.array_equal(entry.pictures[2], np.eye(4, dtype=bool))


def test_an_entry_with_fewer_episodes_than_pictures_holds_one_mask_each(tmp_path: Path
                                                                         ) -> None:
    path = entry_with(tmp_path, inputs_of(), pictures=3)
    assert read_entry(path, inputs_of(), 6)[0] is not None  # 3 episodes: 3 masks


def corrupt(path: Path, how: str) -> None:
    entry = json.loads(path.read_text())
    if how == "truncated":
        path.write_text(path.read_text()[:40])
        return
    if how == "other inputs":
        entry["inputs"]["backend_version"] = "onnxruntime 0.1"
    elif how == "no result field":
        del entry["result"]["miou"]
    elif how == "too few masks":
        entry["pictures"] = entry["pictures"][:2]
    elif how == "bad mask bits":
        entry["pictures"][0]["bits"] = "!!"
    elif how == "mask shape 3-D":
        entry["pictures"][0]["shape"] = [4, 4, 1]
    elif how == "not an object":
        entry = [entry]
    path.write_text(json.dumps(entry))


@pytest.mark.parametrize("how", ["truncated", "other inputs", "no result field",
                                 "too few masks", "bad mask bits", "mask shape 3-D",
                                 "not an object"])
def test_a_bad_entry_is_not_read(how: str, tmp_path: Path) -> None:
    path = entry_with(tmp_path, inputs_of())
    corrupt(path, how)
    entry, why = read_entry(path, inputs_of(), 3)
    assert entry is None and why != "cached"


def test_a_missing_entry_is_not_cached(tmp_path: Path) -> None:
    assert read_entry(tmp_path / "eval-x.json", inputs_of(), 3) == (None, "not cached")


def test_the_data_fingerprint_follows_the_files_under_the_root(tmp_path: Path) -> None:
    """A dataset edited in place, under the same root, is another input."""
    import os

    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    image = root / "JPEGImages" / "a.jpg"
    image.write_bytes(b"1234")
    os.utime(image, ns=(1_000_000_000, 1_000_000_000))
    first = data_fingerprint(root)
    assert data_fingerprint(str(root)) == first and data_fingerprint(None) is None
    image.write_bytes(b"5678")  # same size, new contents: the modification time moves
    os.utime(image, ns=(2_000_000_000, 2_000_000_000))
    edited = data_fingerprint(root)
    assert edited != first
    (root / "JPEGImages" / "b.jpg").write_bytes(b"")
    assert data_fingerprint(root) != edited
    (root / "JPEGImages" / "b.jpg").rename(root / "JPEGImages" / "c.jpg")
    assert data_fingerprint(root) not in (first, edited)


def test_deploy_keys_its_evaluations_by_the_data_under_the_root(tiny_bundle: Path,
                                                                tmp_path: Path) -> None:
    """The pipeline passes the fingerprint into every variant's key: a mask edited in
    place names another cache entry."""
    from crnet.data.options import EpisodeSource
    from crnet.deploy import pipeline
    from crnet.deploy.options import DeployOptions

    root = tmp_path / "folder"
    (root / "cats").mkdir(parents=True)
    mask = root / "cats" / "a.mask.png"
    mask.write_bytes(b"old")
    deploy_options = DeployOptions(checkpoint=None, data=EpisodeSource("folder", root),
                                   episodes=3, progress=False)
    variants = {"reference": ("torch", "fp32"), "fp32": ("onnxruntime", "fp32")}
    settings = pipeline.gate_settings(deploy_options, 0)

    def keys() -> dict[str, Path]:
        inputs = pipeline._evaluation_inputs(tiny_bundle, variants, deploy_options, settings)
        assert {entry["episodes"]["data_files"] for entry in inputs.values()} == {
            data_fingerprint(root)}
        return {name: entry_path(tmp_path, entry) for name, entry in inputs.items()}

    before = keys()
    mask.write_bytes(b"new, longer")
    after = keys()
    assert all(before[name] != after[name] for name in variants)
