"""The `crnet` command layer: every subcommand's --help, --version, cheap parsers, and no
argument parsing anywhere below crnet.cli."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import crnet
from crnet.cli import SUBCOMMANDS, main

ROOT = Path(__file__).resolve().parents[3]
# the folders of the installed packages (pyproject.toml's package-dir)
PACKAGE_FOLDERS = ("crnet", "runtime", "data", "models", "export", "calibration", "engines")
CLI_FOLDER = Path("crnet") / "cli"


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_every_command_has_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: crnet {command}")
    assert "options:" in out


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command, (_, text) in SUBCOMMANDS.items():
        assert f"  {command}" in out and text in out
    assert main([]) == 2  # no command is a usage error, with the same listing
    assert "commands:" in capsys.readouterr().out


def test_version_is_the_package_metadata(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"crnet {metadata.version('crnet-deploy')}\n"
    assert out.split()[1] == crnet.__version__


def test_a_bad_option_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lint", "--no-such-option", "x"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
    assert main(["synthetic"]) == 2  # a check in run(): UsageError, one line
    assert capsys.readouterr().err.strip() == (
        "crnet synthetic: error: give --bench, --preview PATH and/or --write-voc DIR")


def test_building_every_parser_imports_no_engine() -> None:
    """The plain install (numpy, onnx, onnxruntime) can show every command's help, and
    building a parser loads not even onnxruntime."""
    code = ("import sys\n"
            "from crnet.cli import SUBCOMMANDS, build_parser\n"
            "for command in SUBCOMMANDS:\n"
            "    build_parser(command).format_help()\n"
            "heavy = ('torch', 'onnxruntime', 'openvino', 'tensorrt', 'tqdm', 'PIL', 'skimage',\n"
            "         'safetensors', 'onnxscript', 'onnxconverter_common', 'tritonclient',\n"
            "         'pytriton', 'polygraphy', 'numba')\n"
            "print(sorted(name for name in heavy if name in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "[]"


def argparse_users(root: Path, folders: tuple[str, ...], allowed: Path) -> list[str]:
    """Files under ``folders`` (outside ``allowed``) that import argparse or tqdm, or define
    a module-level ``main``: argument parsing and progress bars belong to the command
    layer (stages report through crnet.runtime.progress)."""
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root)
            if relative.is_relative_to(allowed):
                continue
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                found += [f"{relative}: imports {module}" for module in ("argparse", "tqdm")
                          if any(name.split(".")[0] == module for name in names)]
            found += [f"{relative}: defines main()" for node in tree.body
                      if isinstance(node, ast.FunctionDef) and node.name == "main"]
    return found


def test_only_the_command_layer_parses_arguments() -> None:
    assert argparse_users(ROOT, PACKAGE_FOLDERS, CLI_FOLDER) == []


def test_the_argparse_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "stage").mkdir()
    (tmp_path / "stage" / "a.py").write_text("import argparse\n")
    (tmp_path / "stage" / "b.py").write_text(
        "def f():\n    from argparse import Namespace\n\n\ndef main():\n    pass\n")
    (tmp_path / "stage" / "c.py").write_text("import sys\n")
    (tmp_path / "stage" / "e.py").write_text("def f():\n    from tqdm import tqdm\n")
    (tmp_path / "cli").mkdir()
    (tmp_path / "cli" / "d.py").write_text("import argparse\n\n\ndef main():\n    pass\n")
    assert argparse_users(tmp_path, ("stage", "cli"), Path("cli")) == [
        "stage/a.py: imports argparse", "stage/b.py: imports argparse",
        "stage/b.py: defines main()", "stage/e.py: imports tqdm"]


@pytest.mark.parametrize(("script", "command"), [
    (["export/to_onnx.py"], "export"),
    (["-m", "crnet.data.synthetic"], "synthetic"),
    (["-m", "crnet.models.model_card"], "model-card"),
])
def test_stage_scripts_hand_over_to_the_command(script: list[str], command: str) -> None:
    result = subprocess.run([sys.executable, *script, "--help"], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: crnet {command}")
