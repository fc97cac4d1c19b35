"""Where a bundle keeps its ONNX Runtime graph-optimised models (stdlib only).

`crnet build` on a machine without TensorRT (or with ``--target ort``) saves ONNX Runtime's
optimised graphs at runtime.layout's ``ort_build_relpath`` and records them in the
manifest's ``ort_builds`` section (export/engine_ort.py). The onnxruntime backend asks
``ort_build_path`` for the file to prefer over the plain ONNX.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crnet.runtime.bundle import relative_member
from crnet.runtime.layout import ORT_BUILD_DIR, ort_build_relpath

__all__ = ["ORT_BUILD_DIR", "ort_build_path", "ort_build_relpath"]


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(str(version).split(".")[:2])


def ort_build_path(bundle: Any, graph: str, precision: str, *,
                   onnxruntime_version: str | None = None,
                   execution_provider: str = "CPUExecutionProvider") -> Path | None:
    """The optimised model of ``graph`` at ``precision`` if the bundle has a usable one.

    ``bundle`` is a runtime.bundle.Bundle. None when there is no build, its file is missing,
    it was built from a different ONNX than the bundle's current one (stale), for another
    execution provider, or (when ``onnxruntime_version`` is given) by another ONNX Runtime
    major.minor, whose fused ops may differ. BundleError when its path leaves the bundle,
    or (in a bundle loaded verified) is not listed in the manifest's ``files``.
    """
    builds = bundle.manifest.get("ort_builds", {})
    entry = builds.get(precision, {}) if isinstance(builds, dict) else None
    entry = entry.get(graph) if isinstance(entry, dict) else None
    if not isinstance(entry, dict) or "path" not in entry:
        return None
    # inside the bundle, and listed (so verified) when the bundle was loaded verified;
    # a path out of the bundle raises BundleError rather than being skipped quietly
    path = relative_member(Path(bundle.root), entry["path"], "ONNX Runtime build")
    if not path.is_file():
        return None
    if getattr(bundle, "verified", False):
        bundle.file_path(entry["path"], f"ONNX Runtime build of {precision} {graph}")
    source_hash = bundle.manifest.get("files", {}).get(entry.get("source", ""))
    if entry.get("source_sha256") is None or source_hash != entry["source_sha256"]:
        return None
    if entry.get("execution_provider", "CPUExecutionProvider") != execution_provider:
        return None
    built_with = entry.get("onnxruntime_version")
    if onnxruntime_version is not None and built_with is not None and \
            _major_minor(built_with) != _major_minor(onnxruntime_version):
        return None
    return path
