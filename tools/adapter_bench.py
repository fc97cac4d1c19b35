"""`python tools/adapter_bench.py BUNDLE [--adapter PATH]`: what applying an adapter
costs an already-loaded Segmenter, and the per-frame latency before and after.

For each CPU backend (onnxruntime, openvino where installed) and each precision the
bundle has: ``Segmenter.set_adapter(adapter)`` and ``set_adapter(None)`` timed over
``--repeats`` rounds (median; the wall time and the CPU time of the process, which on a
shared machine says what the call needs whatever the load), and ``segment()`` per frame
(median of ``--frames``) with the shipped weights and with the adapter, measured in
alternating blocks so that a shared machine's drift shifts both alike.

Without ``--adapter`` the adapter is synthetic: every adaptable tensor of the bundle,
perturbed with seeded noise (the same size as a finetune of all three parts; the cost of
applying one does not depend on its values). ``--openvino-inputs`` also times the
alternative OpenVINO design, the adaptable weights as graph inputs fed on every call, on
the refine graph of each precision: compile time and per-call time with the adapter as
constants against with weight inputs. ``--gate-episodes N`` scores every variant with
per-episode finetuned adapters against the finetuned torch model (needs torch).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("onnxruntime", "openvino")


def synthetic_adapter(bundle: Any, seed: int = 0) -> Any:
    """Every adaptable tensor of ``bundle``, its shipped value plus 10% seeded noise."""
    import onnx
    from onnx import numpy_helper

    from crnet.runtime.adapter import Adapter, adaptable_tensors, bundle_identity

    record = adaptable_tensors(bundle)
    graph = onnx.load(str(bundle.graph_path("refine", "fp32"))).graph
    rng = np.random.default_rng(seed)
    tensors = {}
    for item in graph.initializer:
        if item.name in record:
            value = numpy_helper.to_array(item).astype(np.float32)
            noise = rng.normal(0.0, 0.1 * float(np.abs(value).mean()) + 1e-6, value.shape)
            tensors[item.name] = (value + noise).astype(np.float32)
    return Adapter(tensors, bundle_identity(bundle), {"synthetic": True, "seed": seed})


def cpu_and_wall_ms(call: Callable[[], object]) -> tuple[float, float]:
    """(CPU time of this process, all threads; wall time) of one call, in milliseconds.
    On a machine shared with other work the wall time grows with the load; the CPU time
    is what the call itself needs."""
    cpu, wall = time.process_time(), time.perf_counter()
    call()
    return (time.process_time() - cpu) * 1000.0, (time.perf_counter() - wall) * 1000.0


def median_ms(call: Callable[[], object], count: int) -> float:
    """Median wall time of ``count`` calls, in milliseconds."""
    times = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000.0)
    return statistics.median(times)


def bench_one(bundle_dir: Path, backend: str, precision: str, adapter: Any,
              options: argparse.Namespace) -> dict[str, Any]:
    """Apply/restore cost and per-frame latency of one backend and precision."""
    from crnet.data.synthetic import Synthetic5i
    from crnet.runtime import Segmenter

    episode = Synthetic5i(0, split="test", seed=0).episode(0, shots=5)
    with Segmenter(bundle_dir, backend=backend, precision=precision,
                   threads=options.threads) as segmenter:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        frame = episode.query_image

        def segment() -> object:
            return segmenter.segment(frame)

        median_ms(segment, 3)  # warm-up
        apply, apply_cpu, restore, shipped, adapted = [], [], [], [], []
        for _ in range(options.repeats):
            shipped.append(median_ms(segment, options.frames))
            cpu, wall = cpu_and_wall_ms(lambda: segmenter.set_adapter(adapter))
            apply.append(wall)
            apply_cpu.append(cpu)
            median_ms(segment, 2)  # the new sessions' first runs
            adapted.append(median_ms(segment, options.frames))
            restore.append(cpu_and_wall_ms(lambda: segmenter.set_adapter(None))[1])
            median_ms(segment, 2)
    return {"backend": backend, "precision": precision,
            "apply_ms": statistics.median(apply), "apply_cpu_ms": statistics.median(apply_cpu),
            "restore_ms": statistics.median(restore), "frame_ms": statistics.median(shipped),
            "adapted_frame_ms": statistics.median(adapted)}


def openvino_weight_inputs(bundle: Any, adapter: Any, precision: str,
                           options: argparse.Namespace) -> dict[str, float]:
    """ms per refine call with the adapter compiled in as constants, and with the
    adaptable weights (and int8 scales) as graph inputs fed on each call; plus the
    compile time of each."""
    import onnx
    import openvino as ov
    from onnx import helper

    from crnet.runtime.adapter import graph_overrides, set_initializers

    model = onnx.load(str(bundle.graph_path("refine", precision)))
    overrides = graph_overrides(model.graph, adapter.tensors)
    constants = onnx.ModelProto()
    constants.CopyFrom(model)
    set_initializers(constants.graph, overrides)
    inputs = onnx.ModelProto()
    inputs.CopyFrom(model)
    types = {item.name: item.data_type for item in inputs.graph.initializer}
    kept = [item for item in inputs.graph.initializer if item.name not in overrides]
    del inputs.graph.initializer[:]
    inputs.graph.initializer.extend(kept)
    for name, value in overrides.items():
        inputs.graph.input.append(helper.make_tensor_value_info(name, types[name],
                                                                list(value.shape)))
    spec = bundle.manifest
    channels, (height, width) = spec["feature_channels"], spec["feature_size"]
    rng = np.random.default_rng(0)
    feeds = {"query_feat": rng.normal(size=(1, channels, height, width)).astype(np.float32),
             "support_feat": rng.normal(size=(5, channels, height, width)).astype(np.float32),
             "support_mask": (rng.random((5, 1, height, width)) > 0.5).astype(np.float32)}
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY",
              "NUM_STREAMS": 1, "INFERENCE_NUM_THREADS": options.threads or 0}
    result: dict[str, float] = {}
    for label, proto, extra in (("constants", constants, {}), ("inputs", inputs, overrides)):
        started = time.perf_counter()
        compiled = core.compile_model(core.read_model(proto.SerializeToString(), b""),
                                      "CPU", config)
        result[f"{label}_compile_ms"] = (time.perf_counter() - started) * 1000.0
        request = compiled.create_infer_request()
        call = {**feeds, **extra}
        median_ms(lambda request=request, call=call: request.infer(call), 3)
        result[f"{label}_call_ms"] = median_ms(
            lambda request=request, call=call: request.infer(call), options.frames * 2)
    return result


def gate_check(bundle_dir: Path, backends: list[str], precisions: list[str],
               options: argparse.Namespace) -> list[tuple[str, float, float]]:
    """mIoU of every deployed variant with each episode's finetuned adapter applied, and
    its delta to the finetuned torch model (crnet.models.finetune, default settings):
    ``--gate-episodes`` synthetic-5i fold-0 test episodes, 5-shot. Needs torch."""
    from crnet.data.synthetic import Synthetic5i
    from crnet.models.finetune import finetune, open_source
    from crnet.runtime import Segmenter
    from crnet.runtime.metrics import FewShotMeter

    source = open_source(bundle_dir)
    names = ["torch fp32"] + [f"{b} {p}" for b in backends for p in precisions]
    segmenters = {"torch fp32": Segmenter(bundle_dir, backend="torch", threads=options.threads)}
    for name in names[1:]:
        backend, precision = name.split()
        segmenters[name] = Segmenter(bundle_dir, backend=backend, precision=precision,
                                     threads=options.threads)
    meters = {name: FewShotMeter() for name in names}
    fusion = FewShotMeter()
    dataset = Synthetic5i(0, split="test", seed=0)
    for index in range(options.gate_episodes):
        episode = dataset.episode(index, shots=5)
        images, masks = list(episode.support_images), list(episode.support_masks)
        adapter = finetune(source, images, masks)
        for name, segmenter in segmenters.items():
            if name == "torch fp32":
                segmenter.set_adapter(None)
                segmenter.set_support(images, masks)
                fusion.update(episode.class_id, segmenter.segment(episode.query_image),
                              episode.query_mask)
            segmenter.set_support(images, masks, adapter=adapter)
            meters[name].update(episode.class_id, segmenter.segment(episode.query_image),
                                episode.query_mask)
    for segmenter in segmenters.values():
        segmenter.close()
    reference = meters["torch fp32"].miou()
    print(f"5-shot prototype fusion (torch, shipped weights): {fusion.miou():.2f} mIoU")
    return [(name, meters[name].miou(), meters[name].miou() - reference) for name in names]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--adapter", type=Path, help="a saved adapter (default: synthetic)")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    parser.add_argument("--precisions", default="fp32,fp16,int8")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--openvino-inputs", action="store_true")
    parser.add_argument("--gate-episodes", type=int, default=0,
                        help="also score each variant with per-episode finetuned adapters "
                             "against the finetuned torch model on N episodes (needs torch)")
    options = parser.parse_args(argv)

    from crnet.runtime.adapter import load_adapter
    from crnet.runtime.backends import backend_class
    from crnet.runtime.bundle import Bundle

    bundle = Bundle.load(options.bundle)
    adapter = (load_adapter(options.adapter, bundle) if options.adapter
               else synthetic_adapter(bundle))
    size = sum(t.size for t in adapter.tensors.values())
    print(f"bundle {options.bundle} ({bundle.manifest['model']['name']}); adapter: "
          f"{len(adapter.tensors)} tensors, {size} values, "
          f"{'synthetic' if options.adapter is None else options.adapter}; threads "
          f"{options.threads or 'default'}; {options.repeats} rounds x {options.frames} frames")
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'backend':<12} {'precision':<9} {'apply ms':>9} {'apply cpu ms':>12} "
          f"{'restore ms':>10} {'frame ms':>9} {'adapted frame ms':>16} {'ratio':>6}")
    for backend in [name for name in options.backends.split(",") if name]:
        available, why = backend_class(backend).is_available()
        if not available:
            print(f"{backend:<12} skipped: {why}")
            continue
        for precision in options.precisions.split(","):
            if precision not in bundle.precisions:
                continue
            row = bench_one(options.bundle, backend, precision, adapter, options)
            print(f"{backend:<12} {precision:<9} {row['apply_ms']:9.1f} "
                  f"{row['apply_cpu_ms']:12.1f} {row['restore_ms']:10.1f} {row['frame_ms']:9.2f} "
                  f"{row['adapted_frame_ms']:16.2f} "
                  f"{row['adapted_frame_ms'] / row['frame_ms']:6.2f}")
    for precision in options.precisions.split(",") if options.openvino_inputs else ():
        if precision in bundle.precisions:
            figures = openvino_weight_inputs(bundle, adapter, precision, options)
            print(f"openvino {precision} refine graph: "
                  + ", ".join(f"{key} {value:.2f}" for key, value in figures.items()))
    if options.gate_episodes:
        backends = [name for name in options.backends.split(",")
                    if name and backend_class(name).is_available()[0]]
        precisions = [p for p in options.precisions.split(",") if p in bundle.precisions]
        rows = gate_check(options.bundle, backends, precisions, options)
        print(f"{'variant (finetuned adapter)':<28} {'mIoU':>7} {'delta vs torch':>15}")
        for name, miou, delta in rows:
            print(f"{name:<28} {miou:7.2f} {delta:+15.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
