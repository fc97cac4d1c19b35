"""Adapters: finetuned refine-graph tensors that a loaded bundle runs without re-export.

A k-shot finetune (crnet.models.finetune, with torch) changes only the tensors after the
frozen trunk; it writes them as an **adapter**, two files side by side:

```
<name>.safetensors   the finetuned tensors, float32, keyed by the fp32 refine graph's
                     ONNX initializer names (only the tensors that changed)
<name>.json          {"format": "crnet-adapter", "format_version": 1,
                      "identity": {"checkpoint_sha256", "refine_sha256"},
                      "settings": {...how it was finetuned...},
                      "tensors": {name: {"shape": [...], "dtype": "float32"}},
                      "weights": "<name>.safetensors", "weights_sha256": "<sha256>"}
```

Both are written and read with numpy and the standard library only (an edge app without
torch loads an adapter made on a host with torch). Which tensors a bundle lets an adapter
replace is the manifest's ``adaptable`` record, written at export::

    "adaptable": {"graph": "refine", "refine_sha256": "<sha256 of refine.fp32.onnx>",
                  "tensors": {"<onnx name>": {"torch_name": ..., "shape": [...],
                                              "part": "cross_reference|condition|refinement"}}}

An adapter is refused (AdapterError) unless it was made for the bundle's checkpoint and
fp32 refine graph and every tensor's name and shape is one of the adaptable ones.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from crnet.runtime.bundle import BundleError
from crnet.runtime.files import atomic_path, read_json_file, sha256_regular_file
from crnet.runtime.safetensors_header import read_safetensors_header

if TYPE_CHECKING:
    from crnet.runtime.bundle import Bundle

__all__ = ["ADAPTABLE_KEY", "ADAPTABLE_PARTS", "ADAPTER_FORMAT", "ADAPTER_FORMAT_VERSION",
           "Adapter", "AdapterError", "adaptable_tensors", "adapter_paths", "bundle_identity",
           "check_adapter", "graph_overrides", "load_adapter", "save_adapter",
           "set_initializers", "symmetric_int8_scale"]

ADAPTER_FORMAT = "crnet-adapter"
ADAPTER_FORMAT_VERSION = 1
ADAPTABLE_KEY = "adaptable"  # the manifest's record of the adaptable tensors
ADAPTABLE_PARTS = ("cross_reference", "condition", "refinement")
IDENTITY_KEYS = ("checkpoint_sha256", "refine_sha256")

_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4")}


class AdapterError(BundleError):
    """An adapter file that is unreadable or tampered with, or that does not fit a bundle
    (another checkpoint or graph, unknown or missing tensor names, wrong shapes)."""


@dataclass(frozen=True)
class Adapter:
    """Finetuned refine-graph tensors (float32, keyed by the fp32 refine graph's ONNX
    initializer names), what they were made for, and how they were made."""

    tensors: dict[str, np.ndarray]
    identity: dict[str, str]
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What ``Segmenter.describe()`` shows: identity, settings, tensor count and size."""
        return {"identity": dict(self.identity), "settings": dict(self.settings),
                "tensors": len(self.tensors),
                "parameters": int(sum(t.size for t in self.tensors.values()))}


def adaptable_tensors(bundle: Bundle) -> dict[str, dict[str, Any]]:
    """The manifest's adaptable tensors of the refine graph: ``{onnx name: {"torch_name",
    "shape", "part"}}``; AdapterError for a bundle exported without the record."""
    record = bundle.manifest.get(ADAPTABLE_KEY)
    tensors = record.get("tensors") if isinstance(record, dict) else None
    if not isinstance(tensors, dict) or not tensors:
        raise AdapterError(f"bundle {bundle.root} records no adaptable tensors (manifest "
                           f"'{ADAPTABLE_KEY}'); re-export it with `crnet export` to use "
                           "adapters")
    return tensors


def bundle_identity(bundle: Bundle) -> dict[str, str]:
    """What an adapter for ``bundle`` must have been made for: the source checkpoint's
    sha256 and the fp32 refine graph's sha256 (as recorded at export)."""
    record = bundle.manifest.get(ADAPTABLE_KEY)
    refine = record.get("refine_sha256") if isinstance(record, dict) else None
    checkpoint = (bundle.manifest.get("source_checkpoint") or {}).get("sha256")
    if not isinstance(refine, str) or not isinstance(checkpoint, str):
        raise AdapterError(f"bundle {bundle.root} records no checkpoint or refine-graph "
                           "hash for adapters; re-export it with `crnet export`")
    return {"checkpoint_sha256": checkpoint, "refine_sha256": refine}


def adapter_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights .safetensors, description .json) of an adapter named by either file or by
    their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def check_adapter(adapter: Adapter, bundle: Bundle, source: str = "adapter") -> None:
    """AdapterError unless ``adapter`` was made for ``bundle`` (same checkpoint and fp32
    refine graph) and each tensor is an adaptable one of the recorded shape."""
    expected = bundle_identity(bundle)
    for key, value in expected.items():
        got = adapter.identity.get(key)
        if got != value:
            raise AdapterError(
                f"{source} was made for another bundle: its {key} is {str(got)[:12]}..., "
                f"bundle {bundle.root} has {value[:12]}...; finetune on this bundle")
    allowed = adaptable_tensors(bundle)
    if not adapter.tensors:
        raise AdapterError(f"{source} holds no tensors; expected some of the bundle's "
                           f"{len(allowed)} adaptable refine-graph tensors")
    unknown = sorted(set(adapter.tensors) - set(allowed))
    if unknown:
        raise AdapterError(f"{source} has tensors the bundle does not let adapters replace: "
                           f"{unknown[:3]}; expected names among {sorted(allowed)[:3]}...")
    for name, tensor in adapter.tensors.items():
        shape = [int(v) for v in allowed[name]["shape"]]
        if list(tensor.shape) != shape or tensor.dtype != np.float32:
            raise AdapterError(f"{source}: tensor {name} is {tensor.dtype} {list(tensor.shape)}"
                               f"; expected float32 {shape}")


def _check_tensors(tensors: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The tensors as C-contiguous float32 arrays; AdapterError for anything else."""
    checked: dict[str, np.ndarray] = {}
    for name, tensor in tensors.items():
        array = np.asarray(tensor)
        if not isinstance(name, str) or not name or name == "__metadata__":
            raise AdapterError(f"adapter tensor name {name!r} is not valid; expected the "
                               "refine graph's initializer names")
        if array.dtype != np.float32:
            raise AdapterError(f"adapter tensor {name} is {array.dtype}; expected float32")
        if not np.all(np.isfinite(array)):
            raise AdapterError(f"adapter tensor {name} has NaN or infinite values; expected "
                               "finite float32 (did the finetune diverge?)")
        checked[name] = np.ascontiguousarray(array, dtype="<f4")
    return checked


def _safetensors_bytes(tensors: dict[str, np.ndarray]) -> bytes:
    """The safetensors encoding (u64 header length, JSON header, raw little-endian data)."""
    header: dict[str, Any] = {"__metadata__": {"format": ADAPTER_FORMAT}}
    chunks, offset = [], 0
    for name in sorted(tensors):
        data = tensors[name].tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks)


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parse a float32 safetensors file with numpy; AdapterError for a malformed one."""
    header, data_start = read_safetensors_header(path, AdapterError)
    with open(path, "rb") as handle:
        handle.seek(data_start)
        data = memoryview(handle.read())
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        dtype = _SAFETENSORS_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise AdapterError(f"{path}: tensor {name!r} is {entry['dtype'][:20]}; an "
                               "adapter holds F32 tensors")
        shape = tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
            raise AdapterError(f"{path}: tensor {name!r} data offsets {[begin, end]} do not "
                               f"fit shape {list(shape)} in a {len(data)}-byte body")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).astype(
            np.float32)
    return tensors


def save_adapter(path: str | Path, adapter: Adapter) -> Path:
    """Write ``adapter`` as ``<stem>.safetensors`` + ``<stem>.json`` (numpy only). Each
    file is written to a temporary file and renamed over its target; the .json, which
    holds the weights' sha256, is renamed last. Returns the .safetensors path."""
    weights_path, description_path = adapter_paths(path)
    tensors = _check_tensors(adapter.tensors)
    if not tensors:
        raise AdapterError("an adapter needs at least one tensor; the finetune changed none")
    missing = [key for key in IDENTITY_KEYS if not isinstance(adapter.identity.get(key), str)]
    if missing:
        raise AdapterError(f"adapter identity lacks {missing}; expected the bundle_identity() "
                           "of the bundle it was finetuned from")
    encoded = _safetensors_bytes(tensors)
    description = {
        "format": ADAPTER_FORMAT, "format_version": ADAPTER_FORMAT_VERSION,
        "identity": dict(adapter.identity), "settings": dict(adapter.settings),
        "tensors": {name: {"shape": list(t.shape), "dtype": "float32"}
                    for name, t in sorted(tensors.items())},
        "weights": weights_path.name,
    }
    try:
        text = json.dumps(description, indent=2) + "\n"
    except (TypeError, ValueError) as error:
        raise AdapterError(f"adapter settings cannot be written as JSON: {error}") from None
    with atomic_path(weights_path) as temporary:
        temporary.write_bytes(encoded)
        description["weights_sha256"] = sha256_regular_file(temporary)
        text = json.dumps(description, indent=2) + "\n"
    with atomic_path(description_path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return weights_path


def _read_description(path: Path) -> dict[str, Any]:
    """The adapter's .json, checked for format, version and the keys a reader needs."""
    if not path.is_file():
        raise AdapterError(f"adapter description {path} not found; an adapter is a "
                           ".safetensors file with its .json beside it")
    try:
        description = read_json_file(path)
    except (OSError, ValueError) as error:
        raise AdapterError(f"cannot read adapter description {path}: {error}") from None
    if not isinstance(description, dict) or description.get("format") != ADAPTER_FORMAT:
        raise AdapterError(f"{path} is not a {ADAPTER_FORMAT} description")
    version = description.get("format_version")
    if version != ADAPTER_FORMAT_VERSION:
        raise AdapterError(f"{path} has {ADAPTER_FORMAT} version {version!r}; this "
                           f"crnet-deploy reads version {ADAPTER_FORMAT_VERSION}")
    for key, kind in (("identity", dict), ("settings", dict), ("tensors", dict),
                      ("weights_sha256", str)):
        if not isinstance(description.get(key), kind):
            raise AdapterError(f"{path}: {key} is {description.get(key)!r}; expected a "
                               f"{kind.__name__}")
    return description


def load_adapter(path: str | Path, bundle: Bundle | None = None) -> Adapter:
    """Read an adapter (either file, or their stem) and verify the weights' sha256 against
    the .json; given ``bundle``, also check it fits (check_adapter). AdapterError else."""
    weights_path, description_path = adapter_paths(path)
    description = _read_description(description_path)
    if not weights_path.is_file():
        raise AdapterError(f"adapter weights {weights_path} not found beside "
                           f"{description_path.name}")
    try:
        actual = sha256_regular_file(weights_path)
    except (OSError, ValueError) as error:
        raise AdapterError(f"cannot read adapter weights {weights_path}: {error}") from None
    if actual != description["weights_sha256"]:
        raise AdapterError(f"{weights_path} does not match {description_path.name}: sha256 "
                           f"{actual}, expected {description['weights_sha256']} (modified "
                           "or corrupt; save the adapter again)")
    tensors = _read_safetensors(weights_path)
    listed = description["tensors"]
    if set(listed) != set(tensors):
        raise AdapterError(f"{description_path} lists tensors {sorted(listed)[:3]}... but "
                           f"{weights_path.name} holds {sorted(tensors)[:3]}...")
    for name, entry in listed.items():
        if not isinstance(entry, dict) or list(entry.get("shape", [])) != list(
                tensors[name].shape):
            raise AdapterError(f"{description_path}: tensor {name} is listed as {entry!r}, "
                               f"but its weights have shape {list(tensors[name].shape)}")
    adapter = Adapter(_check_tensors(tensors),
                      {str(k): str(v) for k, v in description["identity"].items()},
                      dict(description["settings"]))
    if bundle is not None:
        check_adapter(adapter, bundle, f"adapter {weights_path}")
    return adapter


# ONNX TensorProto data types an adaptable initializer may be stored in, per variant
_ONNX_FLOAT_TYPES: dict[int, np.dtype[Any]] = {1: np.dtype(np.float32), 10: np.dtype(np.float16)}
_INT8_SYMMETRIC_STEPS = 254.0  # int8 with TensorRT's rule: [-127, 127], zero point 0


def symmetric_int8_scale(weight: np.ndarray, axis: int) -> np.ndarray:
    """Per-channel symmetric int8 scales of ``weight`` along ``axis``, by the rule
    calibration.int8's quantizer (onnxruntime.quantization, symmetric weights, no reduced
    range) uses: ``2 * max|w| / 254`` per channel, 1.0 for an all-zero channel."""
    axis = axis % weight.ndim
    others = tuple(i for i in range(weight.ndim) if i != axis)
    absmax = np.abs(weight.astype(np.float64)).max(axis=others) if others else np.abs(
        weight.astype(np.float64))
    scale = 2.0 * absmax / _INT8_SYMMETRIC_STEPS
    scale[scale < np.finfo(np.float32).tiny] = 1.0
    return scale.astype(np.float32)


def _weight_quantizers(graph: Any) -> dict[str, tuple[str, int]]:
    """initializer name -> (its scale initializer, axis) for every QuantizeLinear that
    quantizes an initializer (the int8 variant's weights)."""
    initializers = {item.name for item in graph.initializer}
    found: dict[str, tuple[str, int]] = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in initializers:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            found[node.input[0]] = (node.input[1], int(axis))
    return found


def graph_overrides(graph: Any, tensors: dict[str, np.ndarray], prefix: str = "",
                    required: bool = True) -> dict[str, np.ndarray]:
    """The initializer values that put ``tensors`` (fp32, by fp32 refine-graph names) into
    ``graph`` (an onnx GraphProto of the refine graph at any precision, its names carrying
    ``prefix``): each tensor in the initializer's own dtype (fp16 variants), under its
    name and its numbered copies (``<name>0``, ``<name>1``: a bias the int8 quantizer
    duplicated per use), and, for a weight an int8 QuantizeLinear quantizes, its
    re-computed per-channel scale. ``required``: AdapterError when a tensor is not an
    initializer of ``graph`` (a graph an optimiser folded it in)."""
    initializers = {item.name: item for item in graph.initializer}
    quantizers = _weight_quantizers(graph)
    overrides: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        full = prefix + name
        copies = re.compile(re.escape(full) + r"\d+")
        targets = [full] if full in initializers else []
        targets += [other for other in initializers if copies.fullmatch(other)]
        if not targets:
            if required:
                raise AdapterError(f"the graph has no initializer {full}; it cannot take "
                                   "this adapter (was it optimised or re-exported?)")
            continue
        for target in targets:
            item = initializers[target]
            dtype = _ONNX_FLOAT_TYPES.get(item.data_type)
            if dtype is None or list(item.dims) != list(value.shape):
                raise AdapterError(f"initializer {target} is {list(item.dims)} of ONNX type "
                                   f"{item.data_type}; expected float {list(value.shape)}")
            overrides[target] = np.ascontiguousarray(value, dtype=dtype)
            if target in quantizers:
                scale_name, axis = quantizers[target]
                scale_type = _ONNX_FLOAT_TYPES.get(initializers[scale_name].data_type,
                                                   np.dtype(np.float32))
                overrides[scale_name] = symmetric_int8_scale(value, axis).astype(scale_type)
    return overrides


def set_initializers(graph: Any, overrides: dict[str, np.ndarray]) -> int:
    """Write ``overrides`` (graph_overrides' result) into the initializers of ``graph``
    (an onnx GraphProto, changed in place) as raw little-endian data; returns how many
    were written. AdapterError for a name that is missing or stored outside the graph."""
    initializers = {item.name: item for item in graph.initializer}
    for name, value in overrides.items():
        item = initializers.get(name)
        if item is None or item.data_location == 1:  # TensorProto.EXTERNAL
            raise AdapterError(f"initializer {name} is not stored in the graph; cannot "
                               "write an adapter's tensor into it")
        for stored in ("float_data", "int32_data", "double_data", "external_data"):
            item.ClearField(stored)
        item.raw_data = np.ascontiguousarray(value, dtype=value.dtype.newbyteorder("<")
                                             ).tobytes()
    return len(overrides)
