"""`crnet export --force` and the bundle install: what is replaced, no window without a
bundle, and leftovers of killed runs (export/to_onnx.py, runtime/files.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from crnet.export import to_onnx
from crnet.export.to_onnx import ExportError, _install, clean_leftovers, export_bundle
from crnet.runtime.bundle import FORMAT, is_bundle
from crnet.runtime.files import clean_stale_directories, make_owned_directory, scratch_directory

DEAD_PID = 2**31 - 2  # above any pid_max: never a running process


def _fake_bundle(path: Path, tag: str) -> Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"format": FORMAT, "tag": tag}))
    (path / "backbone.fp32.onnx").write_text(tag)
    return path


def test_force_refuses_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "v"
    (out / "sub").mkdir(parents=True)
    (out / "important.txt").write_text("x")
    with pytest.raises(ExportError, match="not a crnet bundle"):
        export_bundle(out, force=True, progress=False)
    assert (out / "important.txt").read_text() == "x" and (out / "sub").is_dir()


def test_the_cli_refuses_force_on_a_directory_that_is_not_a_bundle(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from crnet.cli import main

    out = tmp_path / "v"
    out.mkdir()
    (out / "important.txt").write_text("x")
    code = main(["export", "--out", str(out), "--force", "--preset", "crnet-lite",
                 "--random-weights", "--no-progress"])
    assert code == 1
    assert "only replaces a bundle" in capsys.readouterr().err
    assert (out / "important.txt").read_text() == "x"


def test_a_bundle_without_force_is_refused(tmp_path: Path) -> None:
    out = _fake_bundle(tmp_path / "b", "old")
    with pytest.raises(ExportError, match="--force"):
        export_bundle(out, force=False, progress=False)


def test_replacing_a_bundle_never_leaves_out_without_one(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rename the install makes leaves a complete bundle at --out."""
    out = _fake_bundle(tmp_path / "bundle", "old")
    new = _fake_bundle(tmp_path / ".bundle.1-x.export-tmp", "new")
    seen: list[bool] = []
    real_replace = os.replace

    def watched(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        real_replace(source, target)
        seen.append(is_bundle(out))

    monkeypatch.setattr(os, "replace", watched)
    _install(new, out)
    assert all(seen), f"--out had no bundle after rename(s): {seen}"
    assert json.loads((out / "manifest.json").read_text())["tag"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_fallback_install_restores_the_old_bundle_on_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an atomic swap: if the new bundle cannot be renamed in, the old one is put
    back (no empty --out)."""
    out = _fake_bundle(tmp_path / "bundle", "old")
    new = _fake_bundle(tmp_path / ".bundle.1-x.export-tmp", "new")
    monkeypatch.setattr(to_onnx, "exchange_paths", lambda a, b: False)
    calls = {"n": 0}
    real = to_onnx.replace_durably

    def failing_second(source: Path, target: Path) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk gone")
        real(source, target)

    monkeypatch.setattr(to_onnx, "replace_durably", failing_second)
    with pytest.raises(OSError):
        _install(new, out)
    assert json.loads((out / "manifest.json").read_text())["tag"] == "old"


def test_leftovers_of_killed_exports_are_cleaned_safely(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    dead = _fake_bundle(tmp_path / f".bundle.{DEAD_PID}-abc.export-tmp", "dead")
    alive = _fake_bundle(tmp_path / f".bundle.{os.getpid()}-abc.export-tmp", "alive")
    unrelated = _fake_bundle(tmp_path / ".bundle.keep-me", "mine")
    other_name = _fake_bundle(tmp_path / f".other.{DEAD_PID}-abc.export-tmp", "other")
    retired = _fake_bundle(tmp_path / f".bundle.old-{DEAD_PID}-abc", "old")
    removed = clean_leftovers(out)
    assert dead in removed and not dead.exists()
    assert alive.exists() and unrelated.exists() and other_name.exists()
    # --out was missing: the retired bundle of the killed replace is put back, not deleted
    assert not retired.exists()
    assert json.loads((out / "manifest.json").read_text())["tag"] == "old"


def test_scratch_directories_of_dead_runs_are_removed(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    stale = tmp_path / f"crnet-int8-{DEAD_PID}-zz"
    stale.mkdir()
    legacy = tmp_path / "crnet-int8-abcdef"  # an old unnamed one, recent: kept
    legacy.mkdir()
    with scratch_directory("crnet-int8-") as scratch:
        assert scratch.parent == tmp_path and scratch.name.startswith(f"crnet-int8-{os.getpid()}-")
        assert not stale.exists() and legacy.exists()
    assert not scratch.exists()
    old = 0.0
    os.utime(legacy, (old, old))
    assert clean_stale_directories(tmp_path, "crnet-int8-") == [legacy]


def test_owned_directory_names_carry_the_pid(tmp_path: Path) -> None:
    made = make_owned_directory(tmp_path, ".b.", ".export-tmp")
    assert made.name.startswith(f".b.{os.getpid()}-") and made.name.endswith(".export-tmp")
    shutil.rmtree(made)


def test_a_real_export_replaces_a_bundle_with_force(tiny_checkpoint: Path, tiny_bundle: Path,
                                                    tmp_path: Path) -> None:
    out = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    (out / "stale.txt").write_text("from the old bundle")
    stale_tmp = tmp_path / f".bundle.{DEAD_PID}-abc.export-tmp"
    stale_tmp.mkdir()
    export_bundle(out, tiny_checkpoint, force=True, parity_episodes=1, progress=False)
    assert is_bundle(out) and not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
