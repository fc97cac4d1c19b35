"""A bundle's variants: reading the fp32 graphs, checking a new graph, installing it.

Shared by calibration.fp16 and calibration.int8. New files are written atomically; the
variant is first removed from the manifest, then the files are written, then the manifest
gets the variant with its files' sha256 and a ``how`` record (tool versions, settings,
kept-fp32 ops/layers, calibration, sensitivity). A variant that fails the ONNX checker or
the TensorRT lint is not installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from crnet.models.provenance import training_fold
from crnet.runtime.bundle import GRAPHS, Bundle, graph_file, update_manifest
from crnet.runtime.errors import CrnetError
from crnet.runtime.files import write_bytes_atomic


class QuantizeError(CrnetError, RuntimeError):
    """A variant that cannot be produced or fails a check; nothing is installed."""


def tool_versions() -> dict[str, str]:
    """Versions of the tools that shape a variant."""
    import onnx
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    for package in ("onnxconverter-common", "crnet-deploy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence ORT quantization's logging/print chatter and converter warnings."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


def default_fold(bundle: Bundle) -> int:
    """The fold the bundle's checkpoint was trained on (its base classes), else 0.

    Read through models.provenance from the checkpoint JSON copied into the bundle (what
    `crnet train` wrote), falling back to the manifest's copy of the training record.
    """
    meta_name = bundle.manifest.get("checkpoint", {}).get("metadata")
    training = bundle.manifest.get("source_checkpoint", {}).get("training")
    if meta_name and (bundle.root / meta_name).is_file():
        try:
            training = json.loads((bundle.root / meta_name).read_text()).get("training")
        except (OSError, ValueError, AttributeError) as error:
            raise QuantizeError(f"cannot read the checkpoint record {meta_name} of "
                                f"{bundle.root}: {error}") from error
    fold = training_fold(training)
    return 0 if fold is None else fold


def load_fp32_bundle(bundle_dir: str | Path) -> Bundle:
    """The bundle, with the fp32 graphs (the only files quantization reads) verified.

    Other files (earlier variants, a hand-edited ranges file) are rewritten or re-hashed
    by the quantization itself.
    """
    bundle = Bundle.load(bundle_dir, verify=False)
    bundle.verify_files([graph_file(graph, "fp32") for graph in GRAPHS])
    return bundle


def fp32_sha256(bundle: Bundle) -> dict[str, str]:
    files = bundle.manifest.get("files", {})
    return {graph: files.get(graph_file(graph, "fp32"), "") for graph in GRAPHS}


def check_graph(model: Any, label: str) -> None:
    """ONNX checker (full) and the TensorRT lint; raise QuantizeError on any error."""
    import onnx

    from crnet.export.lint import format_table, lint_model

    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:  # onnx raises several error types
        raise QuantizeError(f"{label} fails the ONNX checker: {error}") from error
    errors = [f for f in lint_model(model, label) if f.severity == "error"]
    if errors:
        raise QuantizeError(f"{label} fails the TensorRT lint:\n{format_table(errors)}")


def install_variant(bundle_dir: str | Path, precision: str, models: dict[str, Any],
                    how: dict[str, Any], extra_files: dict[str, bytes] | None = None,
                    existing_files: Sequence[str] = ()) -> dict[str, Any]:
    """Write both graphs of a variant (and ``extra_files``: name -> bytes) atomically and
    record them, with the (re)hashed ``existing_files``, in the manifest.

    The variant and the files are removed from the manifest first, so a crash in between
    leaves a bundle without that variant, never one whose manifest names half-written or
    unhashed files.
    """
    extra_files = extra_files or {}
    root = Path(bundle_dir)
    names = {graph: graph_file(graph, precision) for graph in GRAPHS}

    def drop(manifest: dict[str, Any]) -> None:
        manifest.get("variants", {}).pop(precision, None)
        for name in [*names.values(), *extra_files, *existing_files]:
            manifest.get("files", {}).pop(name, None)

    update_manifest(root, drop)
    for graph, model in models.items():
        write_bytes_atomic(root / names[graph], model.SerializeToString())
    for name, data in extra_files.items():
        write_bytes_atomic(root / name, data)

    def add(manifest: dict[str, Any]) -> None:
        manifest.setdefault("variants", {})[precision] = {**names, "how": how}

    return update_manifest(root, add,
                           added_files=[*names.values(), *extra_files, *existing_files])

