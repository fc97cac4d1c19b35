"""Bundles for the GPU tests (plain Python): a private copy without engines, and engine
files written and listed in the manifest as `crnet build` lists them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.bundle import update_manifest
from crnet.runtime.files import write_json_atomic
from crnet.runtime.layout import engine_paths

ENGINE_SECTIONS = ("engines", "ort_builds")


def copy_without_engines(source: Path, destination: Path) -> Path:
    """Copy ``source`` to ``destination`` leaving out ``engines/``, and drop from the copy's
    manifest what it recorded about them (``files`` entries under engines/, the
    ``engines`` and ``ort_builds`` sections), so ``Bundle.load(verify=True)`` holds."""
    copy = Path(shutil.copytree(source, destination, ignore=shutil.ignore_patterns("engines")))
    manifest_path = copy / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    files = manifest.get("files", {})
    manifest["files"] = {name: digest for name, digest in files.items()
                         if not name.startswith("engines/")}
    for section in ENGINE_SECTIONS:
        manifest.pop(section, None)
    write_json_atomic(manifest_path, manifest)
    return copy


def write_engine_files(root: Path, graph: str, precision: str, plan: bytes,
                       info: dict[str, Any]) -> tuple[Path, Path]:
    """Write one graph's plan and engine JSON into the bundle at ``root`` and list both,
    hashed, in its manifest (what `crnet build` does), so a verified bundle loads them."""
    plan_path, json_path = engine_paths(root, graph, precision)
    plan_path.parent.mkdir(exist_ok=True)
    plan_path.write_bytes(plan)
    json_path.write_text(json.dumps(info))
    update_manifest(root, lambda manifest: None,
                    added_files=[path.relative_to(root).as_posix()
                                 for path in (plan_path, json_path)])
    return plan_path, json_path


def edit_engine_json(root: Path, graph: str, precision: str, **changes: Any) -> Path:
    """Change fields of one engine JSON and re-sign it in the manifest: the bundle still
    verifies, so what fails next is the backend's own check of the fields."""
    _, json_path = engine_paths(root, graph, precision)
    info = json.loads(json_path.read_text())
    json_path.write_text(json.dumps({**info, **changes}))
    update_manifest(root, lambda manifest: None,
                    added_files=[json_path.relative_to(root).as_posix()])
    return json_path


def episode_inputs(spec: Any, episode: Any) -> dict[str, np.ndarray]:
    """The graphs' inputs for one few-shot episode, preprocessed as the runtime does for a
    model of ``spec`` (runtime.backends.base.ModelSpec): ``images`` [1+K,3,H,W] (the query
    first, then the supports) for the backbone, and ``support_mask`` [K,1,h,w] at the
    feature size for the refine graph."""
    from crnet.runtime.preprocess import preprocess_image, preprocess_mask

    images = [episode.query_image, *episode.support_images]
    return {
        "images": np.concatenate([preprocess_image(image, spec.input_size, spec.mean, spec.std)
                                  for image in images]),
        "support_mask": np.concatenate([
            preprocess_mask(np.asarray(mask == 1, np.uint8), spec.input_size,
                            spec.feature_size) for mask in episode.support_masks]),
    }
