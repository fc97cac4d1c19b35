"""Stages report progress through crnet.runtime.progress; `crnet` draws it with tqdm."""

from __future__ import annotations

import pytest

from crnet.runtime import progress as runtime_progress
from crnet.runtime.progress import SILENT, bar, default_progress, resolve, track


class RecordingProgress:
    """A reporter that records what the bars saw."""

    def __init__(self) -> None:
        self.bars: list[dict[str, object]] = []

    def bar(self, total: int | None, description: str, *, leave: bool = False,
            initial: int = 0) -> RecordingProgress:
        self.bars.append({"total": total, "description": description, "steps": initial,
                          "closed": False})
        return self

    def update(self, n: int = 1) -> None:
        self.bars[-1]["steps"] = int(self.bars[-1]["steps"]) + n  # type: ignore[call-overload]

    def close(self) -> None:
        self.bars[-1]["closed"] = True


def test_track_counts_every_item_and_closes_the_bar() -> None:
    recorder = RecordingProgress()
    assert list(track(range(3), recorder, "parity")) == [0, 1, 2]
    assert recorder.bars == [{"total": 3, "description": "parity", "steps": 3, "closed": True}]
    with bar(recorder, 10, "vs torch") as running:
        running.update(4)
    assert recorder.bars[-1] == {"total": 10, "description": "vs torch", "steps": 4,
                                 "closed": True}


def test_true_means_the_installed_default_and_false_silence() -> None:
    recorder = RecordingProgress()
    assert resolve(True) is SILENT and resolve(False) is SILENT and resolve(None) is SILENT
    with default_progress(recorder):
        assert resolve(True) is recorder and resolve(False) is SILENT
        assert list(track(iter("ab"), True, "eval")) == ["a", "b"]
    assert resolve(True) is SILENT  # restored after the block
    assert recorder.bars == [{"total": None, "description": "eval", "steps": 2, "closed": True}]


def test_a_stage_reports_through_the_reporter_it_is_given() -> None:
    from crnet.data.evaluation import evaluate_many
    from crnet.data.synthetic import Synthetic5i

    recorder = RecordingProgress()
    source = Synthetic5i(0, split="test", seed=0, image_size=33)
    episodes = [source.episode(index, 1) for index in range(2)]
    evaluate_many({"zeros": lambda episode: episode.query_mask * 0}, episodes, total=2,
                  progress=recorder, description="eval zeros")
    assert recorder.bars == [{"total": 2, "description": "eval zeros", "steps": 2,
                              "closed": True}]


def test_the_command_draws_with_tqdm_while_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("tqdm")
    from crnet import cli
    from crnet.cli.progress import TqdmProgress

    seen = []
    monkeypatch.setattr("crnet.cli.commands.info.run",
                        lambda args: seen.append(runtime_progress.resolve(True)) or 0)
    assert cli.main(["info"]) == 0
    assert isinstance(seen[0], TqdmProgress)
    assert runtime_progress.resolve(True) is SILENT
