"""Fixtures shared with the calibration tests: the VOC-layout tree and the read tracker."""

from tests.calibration.conftest import pascal_reads, voc_root  # noqa: F401
