"""The GPU suite's summary: rows the suite records, one table at the end of the pytest run
(tests/engines/conftest.py), written as JSON where $CRNET_TRT_SUMMARY names a file.
Plain Python; state lives for one pytest process."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

_CONTEXT: dict[str, Any] = {}
_ROWS: list[dict[str, str]] = []


def describe(**context: Any) -> None:
    """What ran: TensorRT version, GPU, bundle, episodes."""
    _CONTEXT.update(context)


def record(precision: str, check: str, result: str) -> None:
    """One row: a variant, what was compared, and the figures with pass or FAIL."""
    _ROWS.append({"precision": precision, "check": check, "result": result})


def rows() -> list[dict[str, str]]:
    """The rows recorded so far."""
    return list(_ROWS)


def render() -> str:
    """The summary as plain text (a header line, then an aligned table)."""
    header = ", ".join(f"{key} {value}" for key, value in _CONTEXT.items())
    lines = [f"TensorRT suite: {header}" if header else "TensorRT suite"]
    width = max((len(row["check"]) for row in _ROWS), default=0)
    lines += [f"{row['precision']:<5} {row['check']:<{width}}  {row['result']}"
              for row in _ROWS]
    return "\n".join(lines)


def write_json(path: str | None = None) -> Path | None:
    """Write context and rows to ``path`` (default $CRNET_TRT_SUMMARY); None if neither."""
    target = path or os.environ.get("CRNET_TRT_SUMMARY")
    if not target:
        return None
    Path(target).write_text(json.dumps({"context": _CONTEXT, "rows": _ROWS}, indent=1))
    return Path(target)
