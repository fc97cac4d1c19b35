"""crnet-deploy-gpu (tools/gpu_distribution.py): the GPU install ends with exactly one ONNX
Runtime distribution, read from pip's own resolution report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tests.tool_modules import load_tool

ROOT = Path(__file__).resolve().parents[2]


gpu_distribution = load_tool("gpu_distribution")


def onnxruntime_distributions(report: dict) -> list[str]:  # type: ignore[type-arg]
    """The ONNX Runtime distributions (onnxruntime, onnxruntime-gpu, ...) a pip report
    installs: each owns the same ``onnxruntime/`` folder."""
    names = [item["metadata"]["name"].lower().replace("_", "-") for item in report["install"]]
    return sorted(name for name in names if name.startswith("onnxruntime"))


def resolve(requirement: str, work: Path) -> dict:  # type: ignore[type-arg]
    """pip's --dry-run --report of installing ``requirement`` into a fresh environment."""
    report = work / "report.json"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
         "--no-build-isolation", "--use-feature=fast-deps", "--only-binary=:all:",
         "-c", str(ROOT / "constraints.txt"), "--report", str(report), requirement],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, cwd=work)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())


def test_gpu_pyproject_swaps_every_onnxruntime_requirement() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    project = tomllib.loads(gpu_distribution.gpu_pyproject(text))["project"]
    base = tomllib.loads(text)["project"]
    assert project["name"] == "crnet-deploy-gpu" and project["version"] == base["version"]
    assert "onnxruntime-gpu>=1.19" in project["dependencies"]
    assert "onnxruntime>=1.19" in base["dependencies"]  # the plain install keeps CPU ORT
    assert "onnxruntime-gpu>=1.27" in project["optional-dependencies"]["export"]
    assert project["optional-dependencies"]["test"][0].startswith("crnet-deploy-gpu[")
    assert project["keywords"] == base["keywords"]
    assert set(project["optional-dependencies"]) == set(base["optional-dependencies"])


def test_crnet_deploy_has_no_gpu_extra_and_one_is_refused() -> None:
    """An extra adds onnxruntime-gpu beside the plain install's onnxruntime: never again."""
    text = (ROOT / "pyproject.toml").read_text()
    assert "gpu" not in tomllib.loads(text)["project"]["optional-dependencies"]
    with_extra = text.replace("[project.optional-dependencies]\n",
                              '[project.optional-dependencies]\ngpu = ["onnxruntime-gpu>=1.20"]\n')
    with pytest.raises(gpu_distribution.DistributionError, match=r"\[gpu\] extra"):
        gpu_distribution.gpu_pyproject(with_extra)
    left_over = {"name": "crnet-deploy-gpu", "dependencies": ["onnxruntime-gpu"],
                 "optional-dependencies": {"export": ["onnxruntime>=1.27"]}}
    with pytest.raises(gpu_distribution.DistributionError, match="still requires onnxruntime"):
        gpu_distribution.check_gpu_project(left_over)


def test_the_source_tree_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    out = gpu_distribution.write_gpu_source(tmp_path / "gpu")
    assert (out / "pyproject.toml").is_file() and (out / "runtime" / "segmenter.py").is_file()
    assert (out / "models" / "weights" / "crnet-lite-fold0.safetensors").is_file()
    with pytest.raises(gpu_distribution.DistributionError, match="exists"):
        gpu_distribution.write_gpu_source(out)
    broken = tmp_path / "broken"
    (broken / "runtime").mkdir(parents=True)
    (broken / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    with pytest.raises(FileNotFoundError):
        gpu_distribution.write_gpu_source(tmp_path / "half", root=broken)
    assert not (tmp_path / "half").exists() and not (tmp_path / "half.partial").exists()


def test_gpu_install_resolves_to_one_onnxruntime_distribution(tmp_path: Path) -> None:
    """pip's report for crnet-deploy-gpu lists onnxruntime-gpu alone; the same report for an
    install that adds onnxruntime-gpu as an extra lists both (what the check catches)."""
    source = gpu_distribution.write_gpu_source(tmp_path / "crnet-deploy-gpu")
    assert onnxruntime_distributions(resolve(str(source), tmp_path)) == ["onnxruntime-gpu"]

    extra = tmp_path / "as-an-extra"  # the plain requirements plus a [gpu] extra, no code
    extra.mkdir()
    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (extra / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=65"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "extra-layout"\nversion = "0"\n'
        f"dependencies = {json.dumps(base)}\n"
        '[project.optional-dependencies]\ngpu = ["onnxruntime-gpu>=1.20"]\n'
        "[tool.setuptools]\npackages = []\n")
    assert onnxruntime_distributions(resolve(f"{extra}[gpu]", tmp_path)) == [
        "onnxruntime", "onnxruntime-gpu"]


@pytest.mark.slow
def test_gpu_install_with_export_resolves_to_one_onnxruntime_distribution(
        tmp_path: Path) -> None:
    """The ML engineer's GPU install: [export] (torch, onnxscript, onnxconverter-common ...)
    brings no CPU onnxruntime either."""
    source = gpu_distribution.write_gpu_source(tmp_path / "crnet-deploy-gpu")
    report = resolve(f"{source}[export]", tmp_path)
    assert onnxruntime_distributions(report) == ["onnxruntime-gpu"]
