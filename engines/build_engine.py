"""`crnet build`: trtexec-style TensorRT engine builds, and a bundle mode over them.

    crnet build --onnx refine.fp16.onnx --saveEngine refine.fp16.plan \\
        --minShapes support_feat:1x16x9x9,support_mask:1x1x9x9 \\
        --optShapes support_feat:1x16x9x9,support_mask:1x1x9x9 \\
        --maxShapes support_feat:8x16x9x9,support_mask:8x1x9x9 \\
        --memPoolSize workspace:1024M --timingCacheFile timing.cache
    crnet build --bundle bundle/ --precision all   # both graphs, per variant
    crnet build --bundle bundle/ --print-trtexec   # the trtexec equivalents

The flags are trtexec's. There is no precision flag: precision lives in the ONNX (an fp16
variant is a cast graph, an int8 variant carries Q/DQ nodes), so networks are created
strongly typed (always so on TensorRT 11; ``STRONGLY_TYPED`` on TensorRT 10). Beside each
plan goes ``<plan>.json`` (TensorRT version, GPU, compute capability, profiles, the ONNX's
sha256, builder settings, and how many layers ended up in each precision, read back with
the engine inspector) and ``<plan>.layers.json`` (the inspector's full report).

The command line is crnet.cli.commands.build. Without TensorRT, ``--print-trtexec`` still
works, a plain build says what to install and exits with 3 (EXIT_NO_TENSORRT), and bundle
mode falls back to the CPU target: ONNX Runtime graph-optimised models in ``engines/ort/``
(see engines/engine_ort.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from crnet.engines.build_settings import BuildSettings, Log, Shapes, select_precisions
from crnet.runtime.bundle import GRAPHS, Bundle, BundleError, update_manifest
from crnet.runtime.layout import TIMING_CACHE, engine_layers_path, engine_paths

# ---------------------------------------------------------------- bundle mode


def bundle_profile(manifest: dict[str, Any], graph: str) -> tuple[Shapes, Shapes, Shapes]:
    """(min, opt, max) shapes of a graph from a manifest: batch/shots 1..max_shots, opt 1."""
    height, width = manifest["input_size"]
    feat_h, feat_w = manifest["feature_size"]
    channels = int(manifest["feature_channels"])
    low = int(manifest.get("shots", {}).get("min", 1))
    high = int(manifest.get("shots", {}).get("max", 8))
    if graph == "backbone":
        def shapes(n: int) -> Shapes:
            return {"image": (n, 3, height, width)}
    elif graph == "refine":
        def shapes(n: int) -> Shapes:
            return {"query_feat": (1, channels, feat_h, feat_w),
                    "support_feat": (n, channels, feat_h, feat_w),
                    "support_mask": (n, 1, feat_h, feat_w)}
    else:
        raise BundleError(f"unknown graph {graph!r}; expected one of {GRAPHS}")
    return shapes(low), shapes(low), shapes(high)


def bundle_settings(bundle: Bundle, graph: str, precision: str, **options: Any
                    ) -> BuildSettings:
    """BuildSettings of one graph of a bundle: shapes from the manifest, plan in engines/."""
    low, opt, high = bundle_profile(bundle.manifest, graph)
    plan, _ = engine_paths(bundle.root, graph, precision)
    options.setdefault("timing_cache", bundle.root / TIMING_CACHE)
    return BuildSettings(onnx=bundle.graph_path(graph, precision), engine=plan,
                         min_shapes=low, opt_shapes=opt, max_shapes=high, **options)


def build_bundle(bundle_dir: str | Path, precision: str = "fp32", *, log: Log = print,
                 **options: Any) -> dict[str, Any]:
    """Build TensorRT engines of both graphs of the chosen variant(s) into ``engines/``.

    ``options`` are BuildSettings fields (timing_cache, mem_pool, ...). Records the builds
    in the manifest's ``engines`` section and hashes plans and JSONs into ``files``.
    Returns that section. Raises TensorRTUnavailable without TensorRT.
    """
    from crnet.engines.engine_trt import build_engine, require_tensorrt

    require_tensorrt()
    bundle = Bundle.load(bundle_dir, verify=True)
    built: dict[str, dict[str, Any]] = {}
    added: list[str] = []
    for chosen in select_precisions(bundle, precision):
        for graph in GRAPHS:
            settings = bundle_settings(bundle, graph, chosen, **options)
            log(f"[{graph} {chosen}] {settings.onnx.name} -> "
                f"{settings.engine.relative_to(bundle.root)}")
            info = build_engine(settings, log=log)
            plan, meta = engine_paths(bundle.root, graph, chosen)
            layers = engine_layers_path(plan)
            names = [str(path.relative_to(bundle.root)) for path in (plan, meta, layers)
                     if path.exists()]
            added += names
            built.setdefault(chosen, {})[graph] = {
                "plan": names[0], "json": names[1],
                "tensorrt_version": info["tensorrt_version"],
                "compute_capability": info["compute_capability"],
                "gpu_name": info["gpu_name"],
                "layer_precisions": info.get("layer_precisions"),
                "build_seconds": info["build_seconds"],
            }

    def record(manifest: dict[str, Any]) -> None:
        engines = manifest.setdefault("engines", {})
        for chosen, graphs in built.items():
            engines.setdefault(chosen, {}).update(graphs)

    manifest = update_manifest(bundle.root, record, added_files=added)
    return manifest["engines"]


def require_gpu() -> None:
    """TensorRTUnavailable unless a CUDA device answers (the check `crnet deploy` makes)."""
    from crnet.engines.engine_trt import TensorRTUnavailable
    from crnet.runtime.backends.tensorrt_backend import TensorRTBackend

    available, reason = TensorRTBackend.is_available()
    if not available:
        raise TensorRTUnavailable(f"TensorRT imports but cannot build here: {reason}")


if __name__ == "__main__":  # `python engines/build_engine.py ...` is `crnet build ...`
    import sys

    from crnet.cli import main

    sys.exit(main(["build", *sys.argv[1:]]))
