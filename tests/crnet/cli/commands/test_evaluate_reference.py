"""`crnet eval` of the PyTorch model against itself applies no gate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crnet.cli import main


def test_torch_against_itself_has_no_gate(tiny_checkpoint: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(tiny_checkpoint), "--episodes", "1",
                 "--json", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["backend"] == "torch" and record["precision"] == "fp32"
    assert record["passed"] is None and record["max_abs_delta_miou"] is None
    assert record["is_reference"] is True
    printed = capsys.readouterr().out
    table_row = next(line for line in printed.splitlines() if line.startswith("torch"))
    assert table_row.endswith("-") and "pass" not in table_row
    assert ("note: no gate applies to torch fp32: it is the reference (the PyTorch fp32 "
            "model scored against itself)") in printed
