"""A bundle for one device: copy only what one precision on one backend needs (stdlib only).

A full bundle carries every variant (fp32, fp16, int8), the export's checkpoint copy, the
int8 calibration files and whatever `crnet build` added. A device runs one precision on
one backend; ``slim_bundle`` writes a new bundle holding just that:

* the two graphs of the chosen precision (always: every backend loads them, or checks its
  engines against their hashes);
* for ``onnxruntime``: its CPU builds of that precision (``engines/ort/``), where present;
  for ``tensorrt``: its plans, their descriptions and layer reports, where present;
  ``auto`` keeps both, as the runtime may pick either; ``openvino`` reads the graphs only;
* the checkpoint copy only with ``keep_checkpoint`` (the torch backend and `crnet eval`'s
  reference need it, no deployed backend does).

Calibration files (int8 ranges, TensorRT calibration caches) serve `crnet quantize` and
engine builds, not inference, so they are left out. The manifest is made consistent with
what is kept: ``files`` lists exactly the copied files with their sha256 (each copy is
hashed and compared with the source manifest), ``variants``, ``gates``, ``ort_builds`` and
``engines`` keep the chosen precision only, references to left-out files inside the
variant's ``how`` record become null, and any other section that names a left-out file
(e.g. ``lint``, which describes the fp32 graphs) is dropped. A ``slim`` section records
the choice, what was left out and the source manifest's sha256.

The new bundle is written into a hidden temporary sibling of ``out`` and renamed into
place only once it verifies (``Bundle.load(verify=True)``), so a failure leaves nothing
half-written at ``out``.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crnet.runtime.bundle import GATES_KEY, Bundle, BundleError, read_manifest, relative_member
from crnet.runtime.files import (
    clean_stale_directories,
    current_umask,
    fsync_path,
    make_owned_directory,
    replace_durably,
    sha256_file,
    sha256_regular_file,
    write_json_atomic,
)
from crnet.runtime.layout import GRAPHS, MANIFEST, PRECISIONS, engine_layers_path, graph_file

__all__ = ["SLIM_BACKENDS", "SLIM_KEY", "SlimResult", "format_size", "slim_bundle"]

SLIM_KEY = "slim"
SLIM_BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
"""Backends a slim bundle can be made for: those that run the bundle's graphs or engines
(the torch backend runs the checkpoint: keep the full bundle for it)."""
_ORT_BACKENDS = ("auto", "onnxruntime")
_TRT_BACKENDS = ("auto", "tensorrt")
# sections whose references to files are pruned precision by precision, not dropped
_PRUNED = ("files", "variants", GATES_KEY, "ort_builds", "engines", "checkpoint", SLIM_KEY)


@dataclass(frozen=True)
class SlimResult:
    """What ``slim_bundle`` wrote: the bundle, its choice, and the bytes before and after."""

    out: Path
    precision: str
    backend: str
    kept: dict[str, int]
    """Each file of the new bundle (manifest.json included) and its size in bytes."""
    removed: dict[str, int]
    """Each file of the source's manifest left out, and its size in bytes."""
    size_before: int
    """Bytes of the source bundle: its manifest and every file it lists."""
    size_after: int
    """Bytes of the new bundle."""
    dropped_sections: list[str] = field(default_factory=list)
    """Manifest sections left out because they describe left-out files."""


def format_size(size: int) -> str:
    """Bytes in the largest unit that keeps the number at least 1 (B, kB, MB, GB)."""
    value = float(size)
    for unit in ("B", "kB", "MB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.2f} GB"


def slim_bundle(source: str | Path, out: str | Path, precision: str, backend: str = "auto",
                *, keep_checkpoint: bool = False) -> SlimResult:
    """Write a bundle at ``out`` holding what ``precision`` on ``backend`` needs (module
    docstring); BundleError when the source lacks the precision, a kept file does not match
    the source manifest, or ``out`` exists (and is not an empty directory)."""
    source, out = Path(source), Path(out)
    if precision not in PRECISIONS:
        raise BundleError(f"precision {precision!r} is not known; expected one of {PRECISIONS}")
    if backend not in SLIM_BACKENDS:
        raise BundleError(f"cannot slim a bundle for backend {backend!r}; expected one of "
                          f"{SLIM_BACKENDS} (the torch backend runs the checkpoint: keep the "
                          "full bundle for it)")
    manifest = read_manifest(source)
    holds = [p for p in PRECISIONS if p in manifest["variants"]]
    if precision not in holds:
        raise BundleError(f"bundle {source} has no {precision} variant (it holds {holds}); "
                          "choose one of those, or add it with `crnet quantize` first")
    _check_out(source, out)
    keep = _needed_files(manifest, precision, backend, keep_checkpoint)
    listed: dict[str, str] = manifest["files"]
    removed = {name: _size(source, name) for name in sorted(set(listed) - set(keep))}
    slim, dropped = _slim_manifest(manifest, precision, backend, keep, set(removed),
                                   source)

    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}."
    clean_stale_directories(out.parent, prefix, ".slim-tmp")
    work = make_owned_directory(out.parent, prefix, ".slim-tmp")
    try:
        for name in keep:
            _copy_checked(source, work, name, listed[name])
        write_json_atomic(work / MANIFEST, slim)
        Bundle.load(work, verify=True).graph_path(GRAPHS[0], precision)
        work.chmod(0o777 & ~current_umask())  # mkdtemp makes it owner-only
        if out.exists():  # an empty directory: rename replaces it
            out.rmdir()
        replace_durably(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    kept = {name: _size(out, name) for name in [*keep, MANIFEST]}
    before = sum(_size(source, name) for name in listed) + _size(source, MANIFEST)
    return SlimResult(out=out, precision=precision, backend=backend, kept=kept,
                      removed=removed, size_before=before, size_after=sum(kept.values()),
                      dropped_sections=dropped)


def _check_out(source: Path, out: Path) -> None:
    """``out`` must be new (or an empty directory) and outside the source bundle."""
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise BundleError(f"{out} already exists; a slim bundle is written to a new "
                          "directory (choose another --out, or remove it)")
    resolved = out.resolve()
    if resolved == source.resolve() or resolved.is_relative_to(source.resolve()):
        raise BundleError(f"{out} is inside the source bundle {source}; write the slim "
                          "bundle next to it, not into it")


def _needed_files(manifest: dict[str, Any], precision: str, backend: str,
                  keep_checkpoint: bool) -> list[str]:
    """The source's listed files that ``precision`` on ``backend`` needs, in order."""
    listed = manifest["files"]
    variant = manifest["variants"][precision]
    keep = [variant.get(graph, graph_file(graph, precision)) for graph in GRAPHS]
    missing = [name for name in keep if name not in listed]
    if missing:
        raise BundleError(f"the {precision} graphs {missing} are not listed in the source's "
                          f"{MANIFEST} 'files'; re-export or re-quantize the bundle")
    if backend in _ORT_BACKENDS:
        for entry in _section(manifest, "ort_builds", precision).values():
            keep.append(entry.get("path"))
    if backend in _TRT_BACKENDS:
        for entry in _section(manifest, "engines", precision).values():
            plan = entry.get("plan")
            keep += [plan, entry.get("json")]
            if isinstance(plan, str):
                keep.append(str(engine_layers_path(Path(plan))))
        keep.append(f"engines/refine_query.{precision}.plan")
    golden = manifest.get("golden")  # golden references: `crnet verify` on the device
    keep += [golden.get("file")] if isinstance(golden, dict) else []
    if keep_checkpoint:
        checkpoint = manifest.get("checkpoint", {})
        keep += list(checkpoint.values()) if isinstance(checkpoint, dict) else []
    unique: list[str] = []
    for name in keep:
        if isinstance(name, str) and name in listed and name not in unique:
            unique.append(name)
    return unique


def _section(manifest: dict[str, Any], key: str, precision: str) -> dict[str, dict[str, Any]]:
    """``manifest[key][precision]`` (per graph), {} where absent or malformed."""
    section = manifest.get(key)
    entries = section.get(precision) if isinstance(section, dict) else None
    if not isinstance(entries, dict):
        return {}
    return {graph: entry for graph, entry in entries.items() if isinstance(entry, dict)}


def _slim_manifest(manifest: dict[str, Any], precision: str, backend: str, keep: list[str],
                   removed: set[str], source: Path) -> tuple[dict[str, Any], list[str]]:
    """The new bundle's manifest (module docstring) and the sections dropped from it."""
    slim = copy.deepcopy(manifest)
    slim["files"] = {name: manifest["files"][name] for name in keep}
    variant = slim["variants"][precision]
    if isinstance(variant.get("how"), dict):
        variant["how"] = _forget(variant["how"], removed)
    slim["variants"] = {precision: variant}
    for key, wanted in ((GATES_KEY, True), ("ort_builds", backend in _ORT_BACKENDS),
                        ("engines", backend in _TRT_BACKENDS)):
        section = slim.get(key)
        if isinstance(section, dict) and wanted and isinstance(section.get(precision), dict):
            slim[key] = {precision: section[precision]}
        else:
            slim.pop(key, None)
    checkpoint = slim.get("checkpoint")
    if isinstance(checkpoint, dict) and any(name in removed for name in checkpoint.values()):
        slim.pop("checkpoint")
    dropped = [key for key, value in slim.items()
               if key not in _PRUNED and _mentions(value, removed)]
    for key in dropped:
        slim.pop(key)
    slim[SLIM_KEY] = {
        "precision": precision, "backend": backend,
        "checkpoint": "checkpoint" in slim,
        "source_manifest_sha256": sha256_file(source / MANIFEST),
        "removed": sorted(removed), "dropped_sections": dropped,
    }
    return slim, dropped


def _forget(value: Any, removed: set[str]) -> Any:
    """``value`` with every string naming a left-out file replaced by None."""
    if isinstance(value, dict):
        return {key: _forget(item, removed) for key, item in value.items()}
    if isinstance(value, list):
        return [_forget(item, removed) for item in value]
    return None if isinstance(value, str) and value in removed else value


def _mentions(value: Any, removed: set[str]) -> bool:
    """Whether any string inside ``value`` names a left-out file."""
    if isinstance(value, dict):
        return any(_mentions(item, removed) for item in value.values())
    if isinstance(value, list):
        return any(_mentions(item, removed) for item in value)
    return isinstance(value, str) and value in removed


def _copy_checked(source: Path, work: Path, name: str, digest: str) -> None:
    """Copy one listed file into ``work``, flush it, and compare its sha256 with the source
    manifest's (so the new bundle is verified as it is written)."""
    origin = relative_member(source, name, "listed file")
    if not origin.is_file():
        raise BundleError(f"{origin} is listed in the manifest but missing")
    target = work / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(origin, target)
    fsync_path(target)
    actual = sha256_regular_file(target)
    if actual != digest:
        raise BundleError(f"{origin} does not match the manifest: sha256 {actual}, expected "
                          f"{digest} (modified or corrupt; re-export the bundle)")


def _size(root: Path, name: str) -> int:
    """Size in bytes of ``root/name`` (0 when it is missing)."""
    try:
        return (root / name).stat().st_size
    except OSError:
        return 0
