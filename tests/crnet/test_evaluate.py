from __future__ import annotations

import json
from pathlib import Path

import pytest

from crnet.cli import main as crnet_main
from crnet.data.evaluation import format_table
from crnet.evaluate import load_gates
from tests.export.conftest import save_tiny_checkpoint

CONTRACT_KEYS = {"miou", "fbiou", "reference_miou", "delta_miou"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("eval-ckpt"))


def test_eval_of_a_bundle_writes_the_contract_json(checkpoint: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.export.to_onnx import export_bundle

    bundle = tmp_path / "bundle"
    export_bundle(bundle, checkpoint, parity_episodes=2, progress=False)
    out = tmp_path / "eval.json"
    code = crnet_main(["eval", "--bundle", str(bundle), "--backend", "onnxruntime",
                       "--precision", "fp32", "--episodes", "3", "--json", str(out),
                       "--no-progress"])
    record = json.loads(out.read_text())
    assert set(record) >= CONTRACT_KEYS
    assert record["backend"] == "onnxruntime" and record["episodes"] == 3
    assert record["delta_miou"] == pytest.approx(record["miou"] - record["reference_miou"])
    assert code == (0 if record["passed"] else 1)
    assert "onnxruntime  fp32" in capsys.readouterr().out


def test_eval_of_a_checkpoint_with_torch(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert crnet_main(["eval", "--checkpoint", str(checkpoint), "--episodes", "2",
                       "--fold", "1", "--seed", "3", "--json", str(out), "--no-progress"]) == 0
    record = json.loads(out.read_text())
    assert record["backend"] == "torch" and record["delta_miou"] == 0.0
    assert {key: record[key] for key in ("dataset", "sampler", "fold", "seed")} == {
        "dataset": "synthetic-5i", "sampler": "uniform", "fold": 1, "seed": 3}


def test_eval_options_carry_one_episode_source(tmp_path: Path) -> None:
    from crnet.cli import build_parser
    from crnet.cli.commands.evaluate import options
    from crnet.data.options import EpisodeSource
    from crnet.runtime.errors import UsageError

    parser = build_parser("eval")
    chosen = options(parser.parse_args(["--fold", "2", "--seed", "7", "--episodes", "4"]))
    assert chosen.data == EpisodeSource(dataset="synthetic-5i", fold=2, seed=7)
    assert chosen.episodes == 4
    with pytest.raises(UsageError, match="applies to pascal-5i only"):
        options(parser.parse_args(["--sampler", "hsnet"]))


def test_eval_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crnet_main(["eval", "--bundle", str(tmp_path / "absent"),
                       "--backend", "onnxruntime"]) == 1
    error = capsys.readouterr().err
    assert "bundle directory not found" in error and "Traceback" not in error
    assert crnet_main(["eval", "--backend", "onnxruntime"]) == 2
    assert "needs --bundle" in capsys.readouterr().err


def test_gates_and_table() -> None:
    gates = load_gates()
    assert gates == {"fp32": 0.05, "fp16": 0.3, "int8": 1.0}
    record = {"backend": "onnxruntime", "precision": "int8", "miou": 60.0, "fbiou": 70.0,
              "reference_miou": 62.0, "delta_miou": -2.0, "max_abs_delta_miou": 1.0,
              "passed": False}
    assert "FAIL" in format_table([record])
