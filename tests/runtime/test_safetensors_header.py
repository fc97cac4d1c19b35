"""runtime.safetensors_header: the header of a safetensors file, read and checked without
torch or numpy, in the caller's error class."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from crnet.runtime.safetensors_header import MAX_HEADER_BYTES, read_safetensors_header


class OwnError(Exception):
    pass


def written(path: Path, header: object, data: bytes = b"") -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_a_real_file_s_table_and_data_offset(tmp_path: Path) -> None:
    path = tmp_path / "a.safetensors"
    save_file({"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, str(path),
              metadata={"by": "test"})
    table, start = read_safetensors_header(path, OwnError)
    assert table == {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}
    assert path.stat().st_size - start == 24
    with open(path, "rb") as handle:
        handle.seek(start)
        assert np.frombuffer(handle.read(), np.float32).tolist() == list(range(6))


@pytest.mark.parametrize(("header", "data", "message"), [
    ([], b"", "not a JSON object"),
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"", "'w' is malformed"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}, b"", "is malformed"),
    ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 0]}}, b"", "is malformed"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, b"\0" * 4, "malformed"),
    ({"w": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "is malformed"),
])
def test_malformed_headers_are_refused_in_the_caller_s_error(
        tmp_path: Path, header: object, data: bytes, message: str) -> None:
    with pytest.raises(OwnError, match=message):
        read_safetensors_header(written(tmp_path / "bad.safetensors", header, data), OwnError)


@pytest.mark.parametrize(("content", "message"), [
    (b"\x01\x02", "too short"),
    (struct.pack("<Q", 50) + b"{}", "header of 50 bytes does not fit the 10-byte file"),
    (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}",
     "over safetensors' limit of 100000000 bytes"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not valid JSON"),
])
def test_lengths_and_bytes_that_cannot_be_a_header_are_refused(
        tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(OwnError, match=message):
        read_safetensors_header(path, OwnError)
