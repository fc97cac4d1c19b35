"""Parity of the exported tiny graphs with PyTorch, and detection of a divergence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crnet.export.parity import MAX_DELTA_MIOU, MIN_AGREEMENT, ParityError, check_parity
from crnet.models.checkpoint import load_checkpoint
from crnet.runtime.bundle import Bundle


def graphs(bundle: Path) -> tuple[Bundle]:
    return (Bundle.load(bundle),)


def test_parity_passes_with_mixed_shot_counts(tiny_bundle: Path) -> None:
    model, _ = load_checkpoint(tiny_bundle / "checkpoint.safetensors")
    report = check_parity(model, *graphs(tiny_bundle), episodes=4, progress=False)
    assert report.passed, report.summary()
    assert report.max_abs_logit_diff < 1e-3
    assert report.foreground_agreement >= MIN_AGREEMENT
    assert report.delta_miou <= MAX_DELTA_MIOU
    assert {report.outputs[name].shots for name in report.outputs} <= {1, 5}
    assert report.shot_cycle == [1, 5]
    data = report.to_dict()
    assert data["passed"] and data["max_abs_logit_diff"] == report.max_abs_logit_diff


def test_parity_reports_where_it_diverged(tiny_bundle: Path) -> None:
    model, _ = load_checkpoint(tiny_bundle / "checkpoint.safetensors")
    with torch.no_grad():
        model.refinement.classifier.weight.mul_(-1.0)  # PyTorch no longer matches the graphs
        model.refinement.classifier.bias.mul_(-1.0)
    report = check_parity(model, *graphs(tiny_bundle), episodes=2, progress=False)
    assert not report.passed
    worst = report.outputs["query_logits"]
    assert worst.max_abs_diff > 1e-2 and worst.episode in (0, 1)
    assert report.outputs["feat"].max_abs_diff < 1e-3  # the backbone still agrees
    text = str(ParityError(report))
    assert "query_logits: max |diff|" in text and "FAIL:" in text


def test_parity_needs_an_episode(tiny_bundle: Path) -> None:
    model, _ = load_checkpoint(tiny_bundle / "checkpoint.safetensors")
    with pytest.raises(ValueError, match="at least one episode"):
        check_parity(model, *graphs(tiny_bundle), episodes=0, progress=False)
