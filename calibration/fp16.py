"""The fp16 variant: onnxconverter-common's float16 converter with fp32 graph inputs and
outputs (keep_io_types) and the op types of ``Fp16Options.keep_fp32_ops`` kept in fp32,
measured against fp32 on base-class train episodes (calibration.sensitivity)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crnet.calibration.options import FP16_KEEP_FP32_OPS, Fp16Options
from crnet.calibration.reader import describe_data
from crnet.calibration.variants import (
    check_graph,
    default_fold,
    install_variant,
    load_fp32_bundle,
    quiet,
    tool_versions,
)
from crnet.runtime.bundle import GRAPHS, graph_file

__all__ = ["FP16_KEEP_FP32_OPS", "Fp16Options", "convert_fp16", "quantize_fp16"]


def convert_fp16(fp32_model: Any, keep_fp32_ops: Sequence[str]) -> Any:
    """fp32 ModelProto -> fp16 graph with fp32 inputs/outputs, ``keep_fp32_ops`` in fp32."""
    from onnxconverter_common import float16

    with quiet():
        return float16.convert_float_to_float16(
            fp32_model, keep_io_types=True, op_block_list=list(keep_fp32_ops),
            disable_shape_infer=False)


def quantize_fp16(bundle_dir: str | Path, options: Fp16Options | None = None
                  ) -> dict[str, Any]:
    """Add ``backbone.fp16.onnx``/``refine.fp16.onnx`` to a bundle; returns the manifest.

    ``options.check_episodes`` base-class (train split) episodes of ``options.data``
    measure the fp16 graphs against fp32 (recorded in ``how`` with the data; 0 skips it).
    """
    import onnx

    from crnet.calibration import sensitivity

    options = options or Fp16Options()
    started = time.perf_counter()
    bundle = load_fp32_bundle(bundle_dir)
    fold = default_fold(bundle) if options.data.fold is None else options.data.fold
    keep = list(options.keep_fp32_ops)
    models = {}
    for graph in GRAPHS:
        model = convert_fp16(onnx.load(str(bundle.graph_path(graph, "fp32"))), keep)
        check_graph(model, graph_file(graph, "fp16"))
        models[graph] = model
    how: dict[str, Any] = {
        "tool": "onnxconverter_common.float16.convert_float_to_float16",
        "versions": tool_versions(),
        "settings": {"keep_io_types": True, "op_block_list": keep},
        "kept_fp32_ops": keep,
        "io_dtype": "float32",
    }
    if options.check_episodes > 0:
        check = sensitivity.SensitivitySet.build(
            bundle.root, options.data.with_fold(fold), options.check_episodes,
            progress=options.progress)
        score = check.score({g: m.SerializeToString() for g, m in models.items()})
        how["check"] = {"data": describe_data(check.data), **check.data,
                        "episodes": options.check_episodes, **score.to_dict()}
    how["seconds"] = round(time.perf_counter() - started, 2)
    return install_variant(bundle.root, "fp16", models, how)
