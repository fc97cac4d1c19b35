"""The bundle directory: ONNX graphs per precision plus manifest.json (stdlib only).

Where each file lives is decided in runtime.layout; this module reads and updates the
manifest and verifies the files it lists.

manifest.json is the contract between the stages (export, quantize, build, runtime):

```
{
  "format": "crnet-deploy/bundle", "format_version": 1,
  "model": {...CRNetConfig...}, "preprocessing": {...},
  "refine_steps": T, "input_size": [H, W], "feature_size": [h, w],
  "feature_channels": C, "shots": {"min": 1, "max": 8},
  "graphs": {"backbone": {"inputs": [io...], "outputs": [io...]}, "refine": {...}},
  "variants": {"fp32": {"backbone": "backbone.fp32.onnx", "refine": "refine.fp32.onnx",
                        "how": {...}}, "fp16": {...}, "int8": {...}},
  "files": {"backbone.fp32.onnx": "<sha256>", ...},
  "source_checkpoint": {"name": ..., "sha256": ...},
  "versions": {"torch": ..., "onnx": ..., "onnxruntime": ..., "crnet-deploy": ...},
  ...stage reports (parity, lint, calibration, engines)...
}
```
where an io entry is ``{"name", "shape" (ints or axis names), "dtype"}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime.errors import CrnetError
from runtime.files import sha256_file, write_json_atomic
from runtime.layout import GRAPHS, MANIFEST, PRECISIONS, graph_file

__all__ = ["FORMAT", "FORMAT_VERSION", "GRAPHS", "MANIFEST", "PRECISIONS", "Bundle",
           "BundleError", "graph_file", "update_manifest"]

FORMAT = "crnet-deploy/bundle"
FORMAT_VERSION = 1


class BundleError(CrnetError, ValueError):
    """A bundle that is missing, incomplete, or whose files do not match the manifest."""


@dataclass(frozen=True)
class Bundle:
    """A bundle directory and its parsed manifest."""

    root: Path
    manifest: dict[str, Any]

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Bundle:
        """Read manifest.json; with ``verify``, check every listed file's sha256."""
        root = Path(root)
        manifest_path = root / MANIFEST
        if not root.is_dir():
            raise BundleError(f"bundle directory not found: {root}")
        if not manifest_path.exists():
            raise BundleError(
                f"{root} has no {MANIFEST}; is it a bundle written by `crnet export`?"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as error:
            raise BundleError(f"{manifest_path} is not valid JSON: {error}") from error
        if manifest.get("format") != FORMAT:
            raise BundleError(f"{manifest_path} is not a {FORMAT} manifest")
        bundle = cls(root, manifest)
        if verify:
            bundle.verify_files()
        return bundle

    def verify_files(self, names: list[str] | None = None) -> None:
        """Raise BundleError naming the first file that is missing or whose hash differs."""
        files = self.manifest.get("files", {})
        for name in names if names is not None else sorted(files):
            if name not in files:
                raise BundleError(f"{name} is not listed in {self.root / MANIFEST}")
            path = self.root / name
            if not path.exists():
                raise BundleError(f"{path} is listed in the manifest but missing")
            actual = sha256_file(path)
            if actual != files[name]:
                raise BundleError(
                    f"{path} does not match the manifest: sha256 {actual}, "
                    f"expected {files[name]} (modified or corrupt; re-export the bundle)"
                )

    @property
    def precisions(self) -> list[str]:
        """Precisions this bundle has graphs for."""
        return [p for p in PRECISIONS if p in self.manifest.get("variants", {})]

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """Path of one graph at one precision; a clear error if the bundle lacks it."""
        variant = self.manifest.get("variants", {}).get(precision)
        if variant is None:
            hint = "run `crnet quantize` to add it" if precision != "fp32" else "re-export"
            raise BundleError(
                f"bundle {self.root} has no {precision} variant (has {self.precisions}); {hint}"
            )
        return self.root / variant.get(graph, graph_file(graph, precision))

    def io(self, graph: str) -> dict[str, list[dict[str, Any]]]:
        """Input and output specs of a graph."""
        return self.manifest["graphs"][graph]


def update_manifest(root: str | Path, change: Callable[[dict[str, Any]], None],
                    added_files: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply ``change`` to the manifest, hash ``added_files``, and rewrite it atomically."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    change(manifest)
    files = manifest.setdefault("files", {})
    for name in added_files:
        files[name] = sha256_file(root / name)
    write_json_atomic(root / MANIFEST, manifest)
    return manifest
