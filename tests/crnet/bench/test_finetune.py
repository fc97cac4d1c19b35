"""crnet.bench.finetune (`crnet eval --finetune`): fusion and finetuning side by side,
variants gated against the finetuned PyTorch reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from crnet.bench.finetune import evaluate_finetune, format_finetune_table
from crnet.cli import main
from crnet.data.options import EpisodeSource
from crnet.evaluate import EvalOptions

FINETUNE = {"steps": 2, "lr": 1e-2, "pairs_per_step": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _options(bundle: Path, **changes: object) -> EvalOptions:
    values: dict[str, object] = {
        "bundle": bundle, "backend": "onnxruntime", "precision": "fp32",
        "data": EpisodeSource(dataset="synthetic-5i", fold=0, seed=0), "shots": 3,
        "episodes": 3, "progress": False}
    values.update(changes)
    return EvalOptions(**values)  # type: ignore[arg-type]


def test_fusion_and_finetune_side_by_side(tiny_bundle: Path) -> None:
    records = evaluate_finetune(_options(tiny_bundle), FINETUNE)
    assert [(r["backend"], r["precision"], r["mode"]) for r in records] == [
        ("torch", "fp32", "fusion"), ("torch", "fp32", "finetune"),
        ("onnxruntime", "fp32", "fusion"), ("onnxruntime", "fp32", "finetune")]
    reference_fused, reference_tuned, fused, tuned = records
    assert reference_tuned["miou"] != reference_fused["miou"]  # the adapter was applied
    # each mode is judged against the PyTorch reference of the same mode
    assert tuned["reference_miou"] == reference_tuned["miou"]
    assert fused["reference_miou"] == reference_fused["miou"]
    assert tuned["passed"] is True and abs(tuned["delta_miou"]) <= tuned["max_abs_delta_miou"]
    assert tuned["gain_miou"] == pytest.approx(tuned["miou"] - fused["miou"])
    assert tuned["finetune"]["steps"] == 2 and tuned["finetune"]["pairs_per_step"] == 2
    table = format_finetune_table(records)
    assert "fusion finetune" in table.splitlines()[0].replace("  ", " ")
    assert "onnxruntime  fp32" in table and "2 adam steps" in table


def test_a_variant_without_the_adapter_fails_its_gate(tiny_bundle: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from crnet.runtime import Segmenter

    applied: list[str] = []

    def ignore(self: Segmenter, adapter: object) -> None:  # a backend that drops adapters
        applied.append(self.backend_name)
        if self.backend_name == "torch":
            original(self, adapter)

    original = Segmenter.set_adapter
    monkeypatch.setattr(Segmenter, "set_adapter", ignore)
    records = evaluate_finetune(_options(tiny_bundle), {**FINETUNE, "steps": 6, "lr": 5e-2})
    tuned = records[3]
    assert "onnxruntime" in applied
    assert tuned["delta_miou"] != 0.0 and tuned["passed"] is False


def test_cli_flags(tiny_bundle: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--bundle", str(tiny_bundle), "--shots", "1", "--finetune",
                 "--episodes", "1", "--no-progress"]) == 2
    assert "--finetune needs --shots >= 2" in capsys.readouterr().err
    assert main(["eval", "--shots", "5", "--finetune-steps", "3", "--episodes", "1"]) == 2
    assert "--finetune-steps applies with --finetune only" in capsys.readouterr().err
