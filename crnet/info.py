"""Parameter count and FLOPs of each preset at its input size (`crnet info`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from crnet.models.config import PRESETS, preset


def preset_summaries(names: Sequence[str] = ()) -> list[Any]:
    """models.summary.summarize of the named presets (all by default, sorted by name);
    ValueError names an unknown preset."""
    configs = [preset(name) for name in (names or sorted(PRESETS))]
    from crnet.models.summary import summarize

    return [summarize(config) for config in configs]
