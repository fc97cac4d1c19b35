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
  "gates": {"int8": {"openvino": {"passed": true, "delta_miou": -0.66, "graphs": {...}, ...}}},
  ...stage reports (parity, lint, calibration, engines)...
}
```
where an io entry is ``{"name", "shape" (ints or axis names), "dtype"}``, and ``gates``
(written by ``crnet deploy``, read by ``backend="auto"``) says which backend's run of which
variant passed its accuracy gate, for the graph hashes it names.

Every manifest read here is first checked against its schema (runtime.schema: each field's
type, range and finiteness, and caps on the manifest's size; docs/bundle-format.md).
Loading is verified by default: the manifest must list every file a backend loads under
``files``; a listed name must be a plain relative path that stays inside the bundle after
symlinks are resolved, and name a regular file (never a FIFO or device), whose sha256 must
match. A name that escapes the bundle is refused before anything is read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from crnet.runtime.files import (
    exclusive_lock,
    read_json_file,
    sha256_regular_file,
    write_json_atomic,
)
from crnet.runtime.layout import GRAPHS, MANIFEST, MANIFEST_LOCK, PRECISIONS, graph_file
from crnet.runtime.schema import (
    FORMAT,
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    BundleError,
    check_manifest,
)

__all__ = ["FORMAT", "FORMAT_VERSION", "GRAPHS", "MANIFEST", "PRECISIONS", "Bundle",
           "BundleError", "graph_file", "is_bundle", "manifest_lock", "update_manifest"]

GATES_KEY = "gates"


def is_bundle(root: str | Path) -> bool:
    """Whether ``root`` is a directory holding this project's manifest (no verification)."""
    try:
        manifest = read_json_file(Path(root) / MANIFEST, max_bytes=MAX_MANIFEST_BYTES)
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def relative_member(root: Path, name: Any, what: str = "file") -> Path:
    """``root / name`` for a manifest-supplied ``name``, refused (BundleError) unless it is a
    relative path without ``..`` that stays inside ``root`` after resolving symlinks."""
    if not isinstance(name, str) or not name:
        raise BundleError(f"{what} in {root / MANIFEST} is {name!r}; expected a relative "
                          "path inside the bundle")
    pure = PurePosixPath(name)
    if pure.is_absolute() or "\\" in name or ".." in pure.parts or Path(name).is_absolute():
        raise BundleError(f"{what} {name!r} in {root / MANIFEST} points outside the bundle; "
                          "only relative paths inside it (no '..', not absolute) are allowed")
    path = root / name
    try:
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError) as error:  # a symlink loop
        raise BundleError(f"{what} {path} cannot be resolved: {error}") from error
    if not inside:
        raise BundleError(f"{what} {path} resolves to {path.resolve()}, outside the bundle "
                          f"{root}; a bundle's files must live inside it")
    return path


def read_manifest(root: Path) -> dict[str, Any]:
    """Parse ``root/manifest.json`` and check it against the schema (runtime.schema); a
    BundleError for anything unreadable, over MAX_MANIFEST_BYTES, or not as the schema says."""
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise BundleError(f"bundle directory not found: {root}")
    if not manifest_path.exists():
        raise BundleError(
            f"{root} has no {MANIFEST}; is it a bundle written by `crnet export`?"
        )
    try:
        size = manifest_path.stat().st_size
    except OSError as error:
        raise BundleError(f"cannot read {manifest_path}: {error}") from error
    if size > MAX_MANIFEST_BYTES:  # refused unread: parsing it would cost its size
        raise BundleError(f"{manifest_path} is {size} bytes; expected at most "
                          f"{MAX_MANIFEST_BYTES} (a bundle's manifest is tens of kB)")
    try:
        manifest = read_json_file(manifest_path, max_bytes=MAX_MANIFEST_BYTES)
    except (OSError, ValueError) as error:
        raise BundleError(f"cannot read {manifest_path}: {error}") from error
    return check_manifest(manifest, str(manifest_path))


@dataclass(frozen=True)
class Bundle:
    """A bundle directory and its parsed manifest.

    ``verified`` (set by ``load(verify=True)``): every file a backend asks for must be
    listed in ``files`` (and was hashed at load).
    """

    root: Path
    manifest: dict[str, Any]
    verified: bool = field(default=False, compare=False)

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> Bundle:
        """Read manifest.json; with ``verify``, check every listed file's sha256."""
        root = Path(root)
        bundle = cls(root, read_manifest(root), verified=verify)
        if verify:
            bundle.verify_files()
        return bundle

    def verify_files(self, names: list[str] | None = None) -> None:
        """Raise BundleError naming the first file that is missing, outside the bundle, not
        a regular file, or whose hash differs. Names are checked before any is read."""
        files = self.manifest.get("files")
        if not isinstance(files, dict):
            raise BundleError(f"{self.root / MANIFEST} lists no files; re-export the bundle")
        chosen = names if names is not None else sorted(files)
        for name in chosen:
            if name not in files:
                raise BundleError(f"{name} is not listed in {self.root / MANIFEST}")
        paths = {name: relative_member(self.root, name, "listed file") for name in chosen}
        for name, path in paths.items():
            if not path.exists():
                raise BundleError(f"{path} is listed in the manifest but missing")
            try:
                actual = sha256_regular_file(path)
            except ValueError as error:  # a FIFO, device or directory
                raise BundleError(f"{path}: {error}") from error
            if actual != files[name]:
                raise BundleError(
                    f"{path} does not match the manifest: sha256 {actual}, "
                    f"expected {files[name]} (modified or corrupt; re-export the bundle)"
                )

    def file_path(self, name: Any, what: str = "file") -> Path:
        """Path of a manifest-named file a backend will load: inside the bundle, and (for a
        verified bundle) listed in ``files``, so its hash was checked at load."""
        path = relative_member(self.root, name, what)
        if self.verified:
            files = self.manifest.get("files", {})
            if PurePosixPath(name).as_posix() not in files and name not in files:
                raise BundleError(
                    f"{what} {name} is not listed in {self.root / MANIFEST} 'files', so it "
                    "cannot be verified; re-export or rebuild the bundle")
        return path

    @property
    def precisions(self) -> list[str]:
        """Precisions this bundle has graphs for."""
        return [p for p in PRECISIONS if p in self.manifest.get("variants", {})]

    def graph_path(self, graph: str, precision: str = "fp32") -> Path:
        """Path of one graph at one precision; a clear error if the bundle lacks it."""
        variant = self.manifest.get("variants", {}).get(precision)
        if variant is None:
            hint = "run `crnet quantize` to add it" if precision != "fp32" else "re-export"
            slim = self.manifest.get("slim")
            if isinstance(slim, dict):  # written by runtime.slim.slim_bundle
                hint = (f"it was slimmed to {slim.get('precision')} by `crnet bundle slim`: "
                        f"ask for precision={slim.get('precision')!r}, or slim the full "
                        f"bundle for {precision}")
            raise BundleError(
                f"bundle {self.root} has no {precision} variant (has {self.precisions}); {hint}"
            )
        return self.file_path(variant.get(graph, graph_file(graph, precision)),
                              f"{precision} {graph} graph")

    def io(self, graph: str) -> dict[str, list[dict[str, Any]]]:
        """Input and output specs of a graph."""
        return self.manifest["graphs"][graph]

    def variant_hashes(self, precision: str) -> dict[str, str]:
        """The manifest's sha256 of each graph file of a variant ({} without the variant)."""
        variant = self.manifest.get("variants", {}).get(precision, {})
        files = self.manifest.get("files", {})
        return {graph: files.get(variant.get(graph, graph_file(graph, precision)), "")
                for graph in GRAPHS} if variant else {}

    def gate_results(self, precision: str) -> dict[str, dict[str, Any]]:
        """The accuracy gates ``crnet deploy`` recorded for ``precision``, by backend, that
        still describe the variant's current graphs (a re-quantized variant's old records
        are left out)."""
        recorded = self.manifest.get(GATES_KEY, {}).get(precision, {})
        current = self.variant_hashes(precision)
        if not isinstance(recorded, dict) or not current:
            return {}
        return {backend: record for backend, record in recorded.items()
                if isinstance(record, dict) and record.get("graphs") == current}


@contextmanager
def manifest_lock(root: str | Path, what: str = "update the manifest") -> Iterator[None]:
    """Hold the bundle's lock file (``manifest.lock``) so manifest writers serialise; a
    BundleError names the holder when another process keeps it."""
    root = Path(root)
    try:
        with exclusive_lock(root / MANIFEST_LOCK, what):
            yield
    except TimeoutError as error:
        raise BundleError(f"cannot {what} in {root}: {error}") from None


def record_gates(root: str | Path, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Write gate results into the manifest under ``"gates"``: per precision and backend,
    whether the variant passed, its delta mIoU, the gate, the episodes it was judged on and
    the sha256 of the graphs it was judged with (``Bundle.gate_results`` keeps only
    records whose graphs are still the variant's). ``records``: data.evaluation.gate_record
    results carrying ``backend`` and ``precision``; ungated ones (passed None) are skipped."""
    def change(manifest: dict[str, Any]) -> None:
        bundle = Bundle(Path(root), manifest)
        gates = manifest.setdefault(GATES_KEY, {})
        for record in records:
            if record.get("passed") is None or not bundle.variant_hashes(record["precision"]):
                continue  # no gate, or a variant this bundle does not have
            precision, backend = record["precision"], record["backend"]
            gates.setdefault(precision, {})[backend] = {
                "passed": bool(record["passed"]), "delta_miou": record["delta_miou"],
                "max_abs_delta_miou": record["max_abs_delta_miou"],
                "episodes": record["episodes"],
                **{key: record.get(key) for key in ("dataset", "split", "fold", "shots")},
                "graphs": bundle.variant_hashes(precision)}

    return update_manifest(root, change)


def update_manifest(root: str | Path, change: Callable[[dict[str, Any]], None],
                    added_files: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Apply ``change`` to the manifest, hash ``added_files``, check the result against the
    schema, and rewrite it atomically (a change the schema refuses writes nothing).

    Read, change and write happen under the bundle's lock (``manifest_lock``), so two
    writers (two `crnet quantize` runs) serialise instead of losing one's update.
    """
    root = Path(root)
    with manifest_lock(root):
        manifest = read_manifest(root)
        change(manifest)
        files = manifest.setdefault("files", {})
        for name in added_files:
            path = relative_member(root, name, "added file")
            try:
                files[name] = sha256_regular_file(path)
            except ValueError as error:
                raise BundleError(f"{path}: {error}") from error
        # a change that breaks the schema is refused before anything is written, so no
        # writer leaves a manifest that the next reader would refuse
        check_manifest(manifest, f"{root / MANIFEST} (as changed)")
        write_json_atomic(root / MANIFEST, manifest)
    return manifest
