"""The application API added for frames and batches (channels, segment_batch, an explicit
support for streams) under ``mypy --strict``, read from the plain install as an
application reads it (tests/test_typing.py's venv and runner)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_typing import mypy_cache, mypy_strict, venv_python  # noqa: F401 - fixtures

pytest.importorskip("mypy", reason="the typing checks need mypy (pip install -e '.[test]')")

APP = """
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from crnet.runtime import CrnetError, RemoteSegmenter, Segmenter


def app(bundle: str, frame: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_]) -> int:
    with Segmenter(bundle, channels="bgr") as seg:
        seg.set_support([frame], [mask], channels="bgr")
        support = seg.encode_support([frame], [mask])
        masks: list[np.ndarray] = seg.segment_batch([frame, frame])
        pairs: list[tuple[np.ndarray, np.ndarray]] = seg.segment_batch(
            np.stack([frame, frame]), return_prob=True)
        one: np.ndarray = seg.segment(frame, channels="rgb", support=support)
        streamed = [m.any() for m in seg.segment_stream([frame], support=support)]
        probabilities = [p.max() for _, p in seg.segment_stream([frame], return_prob=True)]
    try:
        with RemoteSegmenter("localhost:8000", channels="bgr") as remote:
            remote.set_support([frame], [mask], channels="rgb")
            remote_mask: np.ndarray = remote.segment(frame, channels="bgr")
    except CrnetError:
        return 0
    return (len(masks) + len(pairs) + int(one.any()) + len(streamed) + len(probabilities)
            + int(remote_mask.any()))
"""

WRONG = """
from __future__ import annotations

import numpy as np

from crnet.runtime import Segmenter

seg = Segmenter("bundle")
frame = np.zeros((8, 8, 3), np.uint8)
first = seg.segment_batch([frame], return_prob=True)[0]
first.astype(np.uint8)  # a (mask, probability) pair treated as the mask
"""


def test_the_frame_and_batch_api_passes_mypy_strict(venv_python: Path,  # noqa: F811
                                                    mypy_cache: Path,  # noqa: F811
                                                    tmp_path: Path) -> None:
    app = tmp_path / "app.py"
    app.write_text(APP)
    code, output = mypy_strict(venv_python, mypy_cache, app)
    assert code == 0, output
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    code, output = mypy_strict(venv_python, mypy_cache, wrong)
    assert code == 1 and 'has no attribute "astype"' in output, output
