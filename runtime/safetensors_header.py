"""The header of a safetensors file, read and checked without torch or numpy (stdlib only).

A safetensors file is an 8-byte little-endian header length, that many bytes of JSON
(``{name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}``), then the tensor
data. Checkpoints (crnet.models.checkpoint) and adapters (crnet.runtime.adapter) read it
here, so both refuse the same malformed files with the same words, in their own error
class, before any tensor byte is read.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

MAX_HEADER_BYTES = 100_000_000
"""safetensors' own limit on the header (its ``MAX_HEADER_SIZE``)."""


def read_safetensors_header(path: str | Path, error: type[Exception] = ValueError
                            ) -> tuple[dict[str, dict[str, Any]], int]:
    """(the tensor table {name: {dtype, shape, data_offsets}}, the file offset where the
    tensor data begins). Raises ``error`` with a one-line message for a file that is too
    short, a header over MAX_HEADER_BYTES or past the end of the file, JSON that is not an
    object, or an entry without a dtype, a shape of non-negative ints, or two data offsets
    within the data."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise error(f"{path} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER_BYTES:
            raise error(f"{path}: safetensors header of {length} bytes is over safetensors' "
                        f"limit of {MAX_HEADER_BYTES} bytes (100 MB) for a header")
        if length > size - 8:
            raise error(f"{path}: safetensors header of {length} bytes does not fit the "
                        f"{size}-byte file (corrupt or not safetensors)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as problem:
        raise error(f"{path}: safetensors header is not valid JSON: "
                    f"{type(problem).__name__}") from None
    if not isinstance(header, dict):
        raise error(f"{path}: safetensors header is not a JSON object")
    data_size = size - 8 - length
    tensors: dict[str, dict[str, Any]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not _well_formed(entry, data_size):
            raise error(f"{path}: safetensors header entry {name!r} is malformed (expected "
                        "a dtype, a shape of non-negative ints and two data offsets within "
                        f"the {data_size}-byte data)")
        tensors[name] = entry
    return tensors, 8 + length


def _well_formed(entry: Any, data_size: int) -> bool:
    def whole(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    return (isinstance(entry, dict) and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list) and all(map(whole, entry["shape"]))
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
            and all(whole(offset) and offset <= data_size for offset in entry["data_offsets"])
            and entry["data_offsets"][0] <= entry["data_offsets"][1])
