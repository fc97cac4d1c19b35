"""Deploy's evaluation cache: one file per (variant, backend, episodes), keyed by every input.

An entry holds one variant's evaluation on the test episodes (the figures of
data.evaluation.EvalResult) and its query masks of the first picture episodes, so that a
rerun draws its pictures from the same results its report gives. The entry's file name is
a hash of ``evaluation_inputs``: the cache format and crnet-deploy version, the backend and
the version its registry reports, the precision, the model fields of the manifest, the
checkpoint's hashes, the hashes of every file the backend loads for the variant (graphs,
ONNX Runtime builds, TensorRT plans), and the episodes (dataset, data root and a
fingerprint of the files under it, fold, split, shots, count, seed). A change to any of
them names another file, so a stale entry is never read (a dataset edited in place under
the same root changes the fingerprint); the inputs are also stored in the entry and
compared on load. An entry that does not parse or does not match is evaluated again and
overwritten.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.files import write_json_atomic

CACHE_FORMAT = "crnet-deploy/eval-cache"
CACHE_FORMAT_VERSION = 2
MODEL_FIELDS = ("format_version", "model", "preprocessing", "refine_steps", "input_size",
                "feature_size", "feature_channels", "shots")
CHECKPOINT_FILES = ("checkpoint.safetensors", "checkpoint.json")
RESULT_FIELDS = ("miou", "fbiou", "per_class_iou", "episodes", "seconds", "backend")


@dataclass(frozen=True)
class CachedEvaluation:
    """One variant's evaluation: its result record and its picture-episode masks."""

    result: dict[str, Any]
    pictures: list[np.ndarray]


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("crnet-deploy")
    except metadata.PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


def variant_files(manifest: dict[str, Any], backend: str, precision: str) -> dict[str, str]:
    """The manifest's sha256 of every file the backend may load for the variant: its two
    graphs and every build of that precision under engines/ (none for the reference, which
    runs the checkpoint)."""
    from crnet.runtime.backends.base import REFERENCE_BACKEND
    from crnet.runtime.layout import ENGINES_DIR, GRAPHS

    files: dict[str, str] = manifest.get("files", {})
    if backend == REFERENCE_BACKEND:
        return {}
    variant = manifest.get("variants", {}).get(precision, {})
    names = {variant.get(graph, "") for graph in GRAPHS}
    names |= {name for name in files
              if name.startswith(f"{ENGINES_DIR}/") and f".{precision}." in name}
    return {name: files.get(name, "") for name in sorted(names) if name}


def evaluation_inputs(manifest: dict[str, Any], backend: str, backend_version: str,
                      precision: str, episodes: dict[str, Any], picture_episodes: int
                      ) -> dict[str, Any]:
    """Everything one variant's evaluation depends on (module docstring), JSON-ready."""
    files = manifest.get("files", {})
    return {
        "cache_format": CACHE_FORMAT_VERSION, "crnet_deploy": _package_version(),
        "backend": backend, "backend_version": backend_version, "precision": precision,
        "model": {key: manifest.get(key) for key in MODEL_FIELDS},
        "checkpoint": {"source": (manifest.get("source_checkpoint") or {}).get("sha256"),
                       **{name: files.get(name, "") for name in CHECKPOINT_FILES}},
        "files": variant_files(manifest, backend, precision),
        "episodes": {key: str(value) if isinstance(value, Path) else value
                     for key, value in episodes.items()},
        "picture_episodes": picture_episodes,
    }


def data_fingerprint(root: str | Path | None) -> str | None:
    """A hash of every regular file under ``root``: its path relative to the root, its size
    and its modification time (nothing is read; symbolic links are not followed). None
    without a root (synthetic episodes are made from the seed alone)."""
    import os

    if root is None:
        return None
    digest = hashlib.sha256()
    base = Path(root)
    for directory, folders, names in os.walk(base):
        folders.sort()
        for name in sorted(names):
            path = Path(directory) / name
            try:
                found = path.stat(follow_symlinks=False)
            except OSError:
                continue
            relative = path.relative_to(base).as_posix()
            digest.update(f"{relative}\0{found.st_size}\0{found.st_mtime_ns}\n".encode(
                "utf-8", "surrogateescape"))
    return digest.hexdigest()


def entry_path(cache_dir: Path, inputs: dict[str, Any]) -> Path:
    """Where the evaluation with these inputs is cached."""
    payload = json.dumps(inputs, sort_keys=True, default=str)
    return cache_dir / f"eval-{hashlib.sha256(payload.encode()).hexdigest()[:24]}.json"


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """A boolean HxW mask as its shape and base64 bit-packed pixels."""
    flat = np.asarray(mask, dtype=bool)
    return {"shape": list(flat.shape),
            "bits": base64.b64encode(np.packbits(flat.ravel()).tobytes()).decode("ascii")}


def decode_mask(record: dict[str, Any]) -> np.ndarray:
    """Inverse of ``encode_mask``; ValueError when the record does not hold such a mask."""
    shape = tuple(int(size) for size in record["shape"])
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"mask shape {list(shape)} is not HxW")
    packed = np.frombuffer(base64.b64decode(record["bits"], validate=True), np.uint8)
    count = shape[0] * shape[1]
    if packed.size != (count + 7) // 8:
        raise ValueError(f"{packed.size} packed bytes do not hold a {shape} mask")
    return np.unpackbits(packed, count=count).reshape(shape).astype(bool)


def read_entry(path: Path, inputs: dict[str, Any], pictures: int
               ) -> tuple[CachedEvaluation | None, str]:
    """The entry at ``path`` if it was made from ``inputs`` and holds a result and the masks
    of its first ``pictures`` episodes; else (None, why it cannot be used)."""
    if not path.is_file():
        return None, "not cached"
    try:
        entry = json.loads(path.read_text())
        if entry.get("format") != CACHE_FORMAT or entry.get("inputs") != json.loads(
                json.dumps(inputs, default=str)):
            return None, "made from other inputs"
        result = entry["result"]
        absent = [key for key in RESULT_FIELDS if key not in result]
        if absent:
            return None, f"result lacks {absent}"
        masks = [decode_mask(record) for record in entry["pictures"]]
        expected = min(pictures, int(result["episodes"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as error:
        return None, f"unreadable ({type(error).__name__}: {error})"
    if len(masks) != expected:
        return None, f"holds {len(masks)} picture masks, expected {expected}"
    return CachedEvaluation(result=result, pictures=masks), "cached"


def write_entry(path: Path, inputs: dict[str, Any], result: dict[str, Any],
                pictures: list[np.ndarray]) -> None:
    """Cache one evaluation (atomically: a reader finds the whole entry or none)."""
    write_json_atomic(path, {"format": CACHE_FORMAT, "inputs": inputs, "result": result,
                             "pictures": [encode_mask(mask) for mask in pictures]})
