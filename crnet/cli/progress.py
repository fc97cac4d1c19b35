"""The terminal progress reporter of the `crnet` command: tqdm bars on stderr.

Stages report through crnet.runtime.progress; `crnet` makes this reporter their default
for the duration of a command. Without tqdm (the plain install) the bars are silent.
"""

from __future__ import annotations

from typing import Any

from crnet.runtime.progress import SILENT, Progress, ProgressBar


class TqdmProgress:
    """crnet.runtime.progress.Progress drawn with tqdm."""

    def bar(self, total: int | None, description: str, *, leave: bool = False,
            initial: int = 0) -> ProgressBar:
        """A tqdm bar (tqdm has ``update`` and ``close``)."""
        from tqdm import tqdm

        running: Any = tqdm(total=total, desc=description, leave=leave, initial=initial)
        return running


def terminal_progress() -> Progress:
    """tqdm bars where tqdm is installed, else the silent reporter."""
    import importlib.util

    return TqdmProgress() if importlib.util.find_spec("tqdm") is not None else SILENT
