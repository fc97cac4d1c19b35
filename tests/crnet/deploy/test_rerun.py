"""A rerun of `crnet deploy` after a change gives the report and pictures of a clean deploy.

Each deploy starts from a copy of the session's tiny bundle (exported from the tiny
checkpoint, so the export stage reuses it) and changes one input before deploying again:
a deleted cache entry, stale pictures, a backend that appears. The result is compared with
a clean deploy's: report.json without its timings and reuse flags, the accuracy and picture
sections of report.md, and the PNG files byte for byte.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from crnet.deploy import pipeline
from crnet.deploy.options import DeployOptions
from crnet.deploy.pipeline import deploy
from crnet.runtime.backends.base import backend_class

pytestmark = pytest.mark.openvino  # deploy adds openvino rows where it is installed

TIMING_KEYS = {"seconds", "total_seconds", "stages", "reused", "manifest_sha256", "bundle",
               "speed_target_met"}


def options(checkpoint: Path) -> DeployOptions:
    return DeployOptions(checkpoint=checkpoint, episodes=3, bench_iterations=1,
                         precisions=("fp32", "fp16"), parity_episodes=1, threads=1,
                         check_episodes=2, progress=False)


def without_timings(value: Any) -> Any:
    """report.json minus what differs between two runs of the same inputs: timings (and
    whether the measured speed-up met its target), the reuse flags, the bundle's path and
    its manifest hash, and the benchmark figures (kept: which variants were benched, on
    which backend and episodes)."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items()
                if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def comparable(out: Path) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    report["bench"] = {key: {"backend": bench["backend"], "precision": bench["precision"],
                             "episodes": bench["episodes"]}
                       for key, bench in report["bench"].items()}
    markdown = (out / "report.md").read_text()
    sections = markdown.split("\n## ")
    kept = [s for s in sections if s.startswith(("Accuracy", "Pictures"))]
    return {"json": without_timings(report), "markdown": kept,
            "pictures": {name: (out / name).read_bytes() for name in report["pictures"]}}


def fresh(tmp_path: Path, name: str, bundle: Path) -> Path:
    out = tmp_path / name
    shutil.copytree(bundle, out / "bundle")
    return out


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path,
          tiny_checkpoint: Path) -> Path:
    """A deploy into a directory that holds only the exported bundle."""
    out = fresh(tmp_path_factory.mktemp("clean"), "out", tiny_bundle)
    deploy(out, options(tiny_checkpoint), log=lambda line: None)
    return out


def cache_entry(out: Path, backend: str, precision: str) -> Path:
    for path in sorted((out / "cache").glob("eval-*.json")):
        entry = json.loads(path.read_text())
        inputs = entry.get("inputs", entry)
        if (inputs["backend"], inputs["precision"]) == (backend, precision):
            return path
    raise AssertionError(f"no cache entry of {backend} {precision} in {out}")


@pytest.mark.parametrize("deleted", [("torch", "fp32"), ("onnxruntime", "fp16")])
def test_rerun_after_a_deleted_cache_entry_equals_a_clean_deploy(
        clean: Path, tmp_path: Path, tiny_checkpoint: Path, deleted: tuple[str, str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    cache_entry(out, *deleted).unlink()
    lines: list[str] = []
    deploy(out, options(tiny_checkpoint), log=lines.append)
    assert comparable(out) == comparable(clean)
    assert not any(f"reuse evaluation of {deleted[0]} {deleted[1]} " in line for line in lines)
    assert any("reuse evaluation of onnxruntime fp32 " in line for line in lines)


def test_pictures_are_drawn_again_from_the_cached_results(clean: Path, tmp_path: Path,
                                                          tiny_checkpoint: Path) -> None:
    """Every evaluation is cached; the pictures on disk are stale (another run's): the
    rerun draws its own, equal to the clean deploy's."""
    out = tmp_path / "out"
    shutil.copytree(clean, out)
    stale = (out / "pictures" / "episode-00.png")
    stale.write_bytes(b"a picture of another run")
    (out / "pictures" / "episode-05.png").write_bytes(b"left by a run with more episodes")
    lines: list[str] = []
    deploy(out, options(tiny_checkpoint), log=lines.append)
    assert sum("reuse evaluation of" in line for line in lines) == len(
        list((clean / "cache").glob("eval-*.json")))  # nothing evaluated again
    assert comparable(out) == comparable(clean)
    assert sorted(p.name for p in (out / "pictures").iterdir()) == [
        "episode-00.png", "episode-01.png", "episode-02.png"]


def test_rerun_with_a_backend_added_equals_a_clean_deploy(
        clean: Path, tmp_path: Path, tiny_checkpoint: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Deploy without the openvino backend, then with it (the clean deploy's bundle, so
    that only the evaluations, benchmarks and report are made again)."""
    if not backend_class("openvino").is_available()[0]:
        pytest.skip("needs a second CPU backend: the openvino extra is not installed")
    out = fresh(tmp_path, "out", clean / "bundle")
    with monkeypatch.context() as patch:  # as if the openvino extra were not installed yet
        patch.setattr(pipeline, "extra_cpu_backends", lambda main: [])
        subset = deploy(out, options(tiny_checkpoint), log=lambda line: None)
    assert {record["backend"] for record in subset["accuracy"]} == {"onnxruntime"}
    again = deploy(out, options(tiny_checkpoint), log=lambda line: None)
    assert {record["backend"] for record in again["accuracy"]} == {"onnxruntime", "openvino"}
    assert comparable(out) == comparable(clean)


@pytest.mark.slow  # three exports
def test_rerun_with_a_changed_checkpoint_equals_a_clean_deploy(tmp_path: Path) -> None:
    from tests.export.conftest import save_tiny_checkpoint

    first = save_tiny_checkpoint(tmp_path / "first", seed=0)
    second = save_tiny_checkpoint(tmp_path / "second", seed=1)
    out, clean_out = tmp_path / "out", tmp_path / "clean"
    deploy(out, options(first), log=lambda line: None)
    lines: list[str] = []
    deploy(out, options(second), log=lines.append)
    assert "  checkpoint changed: re-exporting" in lines
    assert not any("reuse evaluation" in line for line in lines)
    deploy(clean_out, options(second), log=lambda line: None)
    assert comparable(out) == comparable(clean_out)
