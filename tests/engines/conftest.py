"""The GPU suite's summary table at the end of a pytest run that recorded any rows."""

from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from tests.engines import trt_summary

    if not trt_summary.rows():
        return
    terminalreporter.write_sep("=", "TensorRT suite summary (paste into an issue)")
    terminalreporter.write_line(trt_summary.render())
    written = trt_summary.write_json()
    if written is not None:
        terminalreporter.write_line(f"(also written to {written})")
