"""One entry for either reduced precision: the fp16 or int8 variant by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crnet.calibration.fp16 import quantize_fp16
from crnet.calibration.int8 import quantize_int8
from crnet.calibration.options import Fp16Options, Int8Options
from crnet.calibration.variants import QuantizeError


def quantize_bundle(bundle_dir: str | Path, precision: str,
                    options: Fp16Options | Int8Options | None = None) -> dict[str, Any]:
    """Add one precision variant (fp16 or int8) to a bundle; returns the manifest.

    ``options``: the precision's options (calibration.options), default when None.
    """
    if precision == "fp16" and isinstance(options, Fp16Options | None):
        return quantize_fp16(bundle_dir, options or Fp16Options())
    if precision == "int8" and isinstance(options, Int8Options | None):
        return quantize_int8(bundle_dir, options or Int8Options())
    if precision not in ("fp16", "int8"):
        raise QuantizeError(f"precision must be fp16 or int8, got {precision!r}")
    raise QuantizeError(f"{precision} takes {precision.capitalize()}Options, got "
                        f"{type(options).__name__}")
