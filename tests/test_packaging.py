"""crnet-deploy as an application's dependency: what its wheel puts where, and that no
name of the application's own shadows it.

The wheel is built once per session and installed, without extras, into a fresh venv
(tests/venvs.py). The checks:

* site-packages gains one top-level package, ``crnet``, plus its dist-info;
* from an application folder with its own ``models``, ``data``, ``runtime`` and ``export``
  modules (the working directory, so they come first on sys.path) every entry point works:
  ``crnet.runtime.Segmenter`` with backend "auto", ``from crnet import Segmenter``, the
  ``crnet`` command and ``python -m crnet``; the torch-backed ones (backend "torch",
  ``Segmenter.from_checkpoint``) run in this test environment from the same kind of folder;
* installing and uninstalling another distribution that ships a top-level ``data`` package
  leaves every installed file of crnet-deploy as its RECORD lists it;
* ``crnet <command> --help`` exits 0 for every subcommand that ``crnet --help`` lists.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.venvs import ROOT, clean_environment, plain_venv, run, tiny_bundle

DIST_INFO = "crnet_deploy-"
# Modules an application commonly has, with the names of the repository's top-level folders.
APP_MODULES = {
    "models/__init__.py": "APP = 'models'\n",
    "data.py": "APP = 'data'\n",
    "runtime.py": "APP = 'runtime'\n",
    "export/__init__.py": "APP = 'export'\n",
}

SHADOWED_APP = """
import json, sys
from pathlib import Path
import data, export, models, runtime  # the application's own modules, imported first
assert (data.APP, export.APP, models.APP, runtime.APP) == ("data", "export", "models",
                                                           "runtime"), "no shadowing"
import numpy as np
import crnet
from crnet import Segmenter as Shortcut
from crnet.runtime import Segmenter
bundle, backend = sys.argv[1], sys.argv[2]
image = np.zeros((90, 120, 3), np.uint8)
image[20:60, 30:90] = (200, 40, 40)
mask = np.zeros((90, 120), np.uint8)
mask[20:60, 30:90] = 1
segmenters = [Segmenter(bundle, backend=backend)]
if backend == "torch":
    segmenters.append(Segmenter.from_checkpoint(threads=1))
for seg in segmenters:
    seg.set_support([image], [mask])
    result = seg.segment(image)
    assert result.shape == (90, 120) and result.dtype == bool
app = Path.cwd().resolve()
print(json.dumps({
    "shortcut": Shortcut is Segmenter,
    "backends": [seg.backend_name for seg in segmenters],
    "app_modules_kept": [sys.modules[n].APP for n in ("data", "export", "models", "runtime")],
    "crnet_files": sorted({str(Path(m.__file__).resolve().parent)
                           for name, m in list(sys.modules.items())
                           if name.split(".")[0] == "crnet" and getattr(m, "__file__", None)}),
    "from_app_folder": [name for name, m in list(sys.modules.items())
                        if Path(getattr(m, "__file__", None) or "").is_absolute()
                        and Path(m.__file__).resolve().is_relative_to(app)
                        and name not in ("data", "export", "models", "runtime")],
}))
"""


@pytest.fixture(scope="module")
def venv_bin(tmp_path_factory: pytest.TempPathFactory, crnet_wheel: Path) -> Path:
    """The plain install's bin directory (shared with tests/runtime/test_plain_install.py)."""
    return plain_venv(tmp_path_factory, crnet_wheel)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle(tmp_path_factory)


@pytest.fixture
def app_folder(tmp_path: Path) -> Path:
    """An application folder whose own modules have the repository's folder names."""
    app = tmp_path / "app"
    for relative, text in APP_MODULES.items():
        (app / relative).parent.mkdir(parents=True, exist_ok=True)
        (app / relative).write_text(text)
    return app


def site_packages(venv_bin: Path) -> Path:
    (site,) = (venv_bin.parent / "lib").glob("python3*/site-packages")
    return site


def installed_record(site: Path) -> list[str]:
    """The lines of the installed crnet-deploy's RECORD."""
    (record,) = site.glob(f"{DIST_INFO}*.dist-info/RECORD")
    return record.read_text().splitlines()


def changed_files(site: Path, record: list[str]) -> list[str]:
    """The RECORD entries whose file is missing or whose sha256 differs from the RECORD."""
    changed = []
    for line in record:
        path, digest, _ = line.rsplit(",", 2)
        if not digest:  # RECORD itself
            continue
        algorithm, expected = digest.split("=", 1)
        file = site / path
        if not file.is_file():
            changed.append(f"{path} (missing)")
            continue
        actual = base64.urlsafe_b64encode(
            hashlib.new(algorithm, file.read_bytes()).digest()).rstrip(b"=").decode()
        if actual != expected:
            changed.append(path)
    return changed


def test_the_wheel_adds_one_top_level_package(crnet_wheel: Path, venv_bin: Path) -> None:
    with zipfile.ZipFile(crnet_wheel) as wheel:
        names = wheel.namelist()
        (top_level,) = [name for name in names if name.endswith(".dist-info/top_level.txt")]
        assert wheel.read(top_level).decode().split() == ["crnet"]
    assert {name.split("/")[0] for name in names} == {"crnet", top_level.split("/")[0]}
    assert "crnet/py.typed" in names  # type checkers read the package's own hints

    site = site_packages(venv_bin)
    record = installed_record(site)
    tops = {line.split(",")[0].split("/")[0] for line in record}
    dist_info = {top for top in tops if top.startswith(DIST_INFO)}
    assert len(dist_info) == 1
    assert tops == {"crnet", "..", *dist_info}  # ".." is the crnet script in bin/
    assert [line.split(",")[0] for line in record
            if line.startswith("..")] == ["../../../bin/crnet"]
    assert (site / "crnet" / "runtime" / "segmenter.py").is_file()
    for name in ("runtime", "models", "data", "export", "calibration", "engines"):
        assert not (site / name).exists(), f"site-packages/{name} must not be installed"


def test_entry_points_work_from_an_app_with_shadowing_module_names(
        venv_bin: Path, bundle: Path, app_folder: Path) -> None:
    result = run([str(venv_bin / "python"), "-c", SHADOWED_APP, str(bundle), "auto"],
                 cwd=app_folder, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["shortcut"] is True
    assert facts["backends"] == ["onnxruntime"]
    assert facts["app_modules_kept"] == ["data", "export", "models", "runtime"]
    assert facts["from_app_folder"] == []
    site = site_packages(venv_bin).resolve()
    assert facts["crnet_files"] and all(Path(folder).is_relative_to(site / "crnet")
                                        for folder in facts["crnet_files"])

    version = run([str(venv_bin / "python"), "-c",
                   "from importlib.metadata import version; print(version('crnet-deploy'))"],
                  cwd=app_folder).stdout.strip()
    for command in ([str(venv_bin / "crnet")], [str(venv_bin / "python"), "-m", "crnet"]):
        shown = run([*command, "--version"], cwd=app_folder)
        assert shown.returncode == 0, shown.stderr[-2000:]
        assert shown.stdout.split() == ["crnet", version]
        listed = run([*command, "--help"], cwd=app_folder)
        assert listed.returncode == 0, listed.stderr[-2000:]
        assert listed.stdout.startswith("usage: crnet")


def test_torch_entry_points_from_an_app_with_shadowing_module_names(
        bundle: Path, app_folder: Path) -> None:
    """The development install (this environment) with torch: backend "torch" and
    Segmenter.from_checkpoint from the same kind of application folder."""
    pytest.importorskip("torch")
    result = subprocess.run([sys.executable, "-c", SHADOWED_APP, str(bundle), "torch"],
                            cwd=app_folder, capture_output=True, text=True, timeout=600,
                            env=clean_environment())
    assert result.returncode == 0, result.stderr[-3000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    assert facts["shortcut"] is True
    assert facts["backends"] == ["torch", "torch"]
    assert facts["app_modules_kept"] == ["data", "export", "models", "runtime"]
    assert facts["from_app_folder"] == []
    assert all(Path(folder).is_relative_to(ROOT) for folder in facts["crnet_files"])


def test_another_top_level_data_package_changes_no_installed_file(
        venv_bin: Path, tmp_path: Path) -> None:
    site = site_packages(venv_bin)
    record = installed_record(site)
    assert changed_files(site, record) == []
    tampered = [line.replace("sha256=", "sha256=A", 1) if line.startswith("crnet/data/")
                else line for line in record]
    assert any(path.startswith("crnet/data/") for path in changed_files(site, tampered))

    source = tmp_path / "other"
    (source / "data").mkdir(parents=True)
    (source / "data" / "__init__.py").write_text("OWNER = 'other-dist'\n")
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "other-dist"\nversion = "1.0"\n'
        '[tool.setuptools]\npackages = ["data"]\n')
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                 "--quiet", "-w", str(tmp_path / "wheels"), str(source)], cwd=tmp_path)
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = (tmp_path / "wheels").glob("other_dist-*.whl")
    pip = [str(venv_bin / "python"), "-m", "pip"]
    probe = [str(venv_bin / "python"), "-c",
             "import importlib.util, crnet.data; spec = importlib.util.find_spec('data'); "
             "print(crnet.data.__name__, spec is not None and spec.origin)"]
    try:
        installed = run([*pip, "install", "--no-deps", "--quiet", str(wheel)], cwd=tmp_path)
        assert installed.returncode == 0, installed.stderr[-3000:]
        assert changed_files(site, record) == []
        both = run(probe, cwd=tmp_path)
        assert both.returncode == 0, both.stderr[-2000:]
        assert both.stdout.split() == ["crnet.data", str(site / "data" / "__init__.py")]
    finally:
        removed = run([*pip, "uninstall", "--yes", "--quiet", "other-dist"], cwd=tmp_path)
    assert removed.returncode == 0, removed.stderr[-3000:]
    assert changed_files(site, record) == []
    after = run(probe, cwd=tmp_path)
    assert after.returncode == 0, after.stderr[-2000:]
    assert after.stdout.split() == ["crnet.data", "False"]


def listed_commands(help_text: str) -> list[str]:
    """The subcommands in ``crnet --help``: the first word of each line under "commands:"."""
    lines = help_text.splitlines()
    start = lines.index("commands:") + 1
    commands = []
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        commands.append(line.split()[0])
    return commands


def test_listed_commands_reads_the_help_layout() -> None:
    text = "usage: crnet <command>\n\ncommands:\n  info  a\n  bench-remote  b\n\nmore\n"
    assert listed_commands(text) == ["info", "bench-remote"]
    with pytest.raises(ValueError):
        listed_commands("usage: crnet <command>\n")


def test_every_listed_command_has_help_in_the_plain_install(venv_bin: Path,
                                                           tmp_path: Path) -> None:
    shown = run([str(venv_bin / "crnet"), "--help"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr[-2000:]
    commands = listed_commands(shown.stdout)
    assert len(commands) >= 5, shown.stdout
    failures = []
    for command in commands:
        result = run([str(venv_bin / "crnet"), command, "--help"], cwd=tmp_path)
        if result.returncode != 0 or not result.stdout.startswith(f"usage: crnet {command}"):
            failures.append(f"{command}: exit {result.returncode}: "
                            f"{(result.stderr or result.stdout)[-500:]}")
    assert failures == []
