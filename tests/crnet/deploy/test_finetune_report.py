"""`crnet deploy` with finetune_episodes: the k-shot finetuning rows and their table."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crnet.deploy.options import DeployOptions
from crnet.deploy.pipeline import finetune_rows
from crnet.deploy.report import _finetune_lines
from crnet.runtime.errors import UsageError


def test_finetune_rows_and_report_table(tiny_bundle: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        logged: list[str] = []
        records = finetune_rows(tiny_bundle, "onnxruntime",
                                DeployOptions(precisions=("fp32",), finetune_episodes=2,
                                              progress=False), 0, logged.append)
    finally:
        torch.set_num_threads(threads)
    assert records is not None
    assert [(r["backend"], r["mode"]) for r in records] == [
        ("torch", "fusion"), ("torch", "finetune"),
        ("onnxruntime", "fusion"), ("onnxruntime", "finetune")]
    assert records[3]["passed"] is True and records[3]["episodes"] == 2
    lines = _finetune_lines(records)
    assert lines[1].startswith("K-shot finetuning (2 5-shot episodes; 12 adam steps")
    assert lines[-1].startswith("| fp32 | onnxruntime |") and lines[-1].endswith("| pass |")
    assert "onnxruntime" in logged[0]


def test_no_rows_unless_asked() -> None:
    assert finetune_rows(Path("unused"), "onnxruntime", DeployOptions(), 0, print) is None
    assert _finetune_lines(None) == []
    with pytest.raises(UsageError, match="finetune_episodes must be at least 0"):
        DeployOptions(finetune_episodes=-1)
