from __future__ import annotations

import pytest

from crnet.cli import main


def test_info_prints_both_presets(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "crnet-lite" in out and "crnet-r50" in out
    assert "41x41" in out and "GFLOPs" in out


def test_unknown_command_lists_known(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err
