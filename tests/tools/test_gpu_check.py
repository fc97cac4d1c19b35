"""tools/gpu_check.py where no GPU is: it runs, checks the CPU backends with `crnet
verify`, skips every GPU row with the reason, and prepares inputs that fit in 64 MiB."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.tool_modules import load_tool

ROOT = Path(__file__).resolve().parents[2]


gpu_check = load_tool("gpu_check")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle with spread logits and golden references (tests/venvs.py)."""
    from tests.venvs import tiny_bundle

    return tiny_bundle(tmp_path_factory)


def test_check_runs_here_and_skips_the_gpu_rows_with_reasons(bundle: Path,
                                                             tmp_path: Path) -> None:
    report = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), "--bundle",
                           str(bundle), "--backends", "onnxruntime,tensorrt", "--budget", "300",
                           "--json", str(report)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {row["what"]: row for row in json.loads(report.read_text())}
    for precision in ("fp32",):
        assert rows[f"verify onnxruntime {precision}"]["status"] == "pass", rows
    for gpu_row in ("verify tensorrt", "torch on CUDA", "GPU suite", "TensorRT"):
        assert rows[gpu_row]["status"] == "skip" and rows[gpu_row]["detail"], gpu_row
    assert "no CUDA" in rows["torch on CUDA"]["detail"]
    assert rows["onnxruntime"]["status"] == "info"
    assert "verify onnxruntime fp32  pass" in done.stdout  # the printed table


@pytest.mark.parametrize(("exit_code", "output", "status", "said"), [
    (0, "1 variant(s) on 20 golden episodes: all passed", "pass", "all passed"),
    (1, "int8 FAILED its gate: agreement 61%", "FAIL", "int8 FAILED"),
    (2, "crnet: error: argument command: invalid choice: 'verify'", "skip", "no `verify`"),
    (4, "the bundle has no golden references", "skip", "no golden references"),
    (3, "Traceback: boom", "error", "exit 3"),
])
def test_verify_exit_codes_are_read(bundle: Path, monkeypatch: pytest.MonkeyPatch,
                                    exit_code: int, output: str, status: str,
                                    said: str) -> None:
    """`crnet verify` is another command: its exit status says pass (0) or a failed gate
    (1); a crnet without it, or a bundle without golden references, is said so."""
    script = f"import sys; print({output!r}, file=sys.stderr); sys.exit({exit_code})"
    monkeypatch.setattr(gpu_check, "crnet_command",
                        lambda *args: [sys.executable, "-c", script])
    row = gpu_check.verify_row(bundle, "onnxruntime", "int8", gpu_check.Deadline(60))
    assert (row.status, row.what) == (status, "verify onnxruntime int8")
    assert said in row.detail


def test_two_onnxruntime_distributions_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    installed = [SimpleNamespace(metadata={"Name": name})
                 for name in ("numpy", "onnxruntime", "onnxruntime-gpu")]
    monkeypatch.setattr(metadata, "distributions", lambda: installed)
    rows = gpu_check.onnxruntime_rows()
    assert rows[0].status == "FAIL" and "onnxruntime and onnxruntime-gpu" in rows[0].detail
    monkeypatch.setattr(metadata, "distributions", lambda: installed[:2])
    assert all(row.status != "FAIL" for row in gpu_check.onnxruntime_rows())


def test_prepare_writes_inputs_within_the_limit(bundle: Path, tmp_path: Path) -> None:
    out = gpu_check.prepare(tmp_path / "gpu-check", from_bundle=bundle)
    assert (out / "bundle" / "manifest.json").is_file() and (out / "gpu_check.py").is_file()
    assert "gpu_check.py --bundle gpu-check/bundle" in (out / "RUN.txt").read_text()
    assert gpu_check.folder_mib(out) <= gpu_check.LIMIT_MIB
    from crnet.runtime.bundle import Bundle

    Bundle.load(out / "bundle", verify=True)


def test_prepare_over_the_limit_leaves_nothing(bundle: Path, tmp_path: Path) -> None:
    with pytest.raises(gpu_check.PrepareError, match="over the 0.01 MiB limit"):
        gpu_check.prepare(tmp_path / "gpu-check", from_bundle=bundle, limit_mib=0.01)
    assert list(tmp_path.iterdir()) == []
