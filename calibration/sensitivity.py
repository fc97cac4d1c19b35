"""Accuracy of reduced-precision graphs on held-out base-class episodes, and per-layer
INT8 sensitivity.

A *layer* is one weight initializer of a Conv/Gemm/MatMul (``graph:weight``, e.g.
``refine:model.refinement.entry.weight``) with every node that uses it (the refine graph
shares weights across the query/support branches and the unrolled refinement steps).

* ``SensitivitySet``: preprocessed base-class episodes (seed ``SENSITIVITY_SEED``, never
  the calibration episodes, never the novel test classes) with the fp32 graphs' outputs;
  ``score`` runs candidate graphs on them and compares with fp32: mean |query foreground
  probability difference| (the cheap logit-error proxy) and delta mIoU.
* ``rank_layers``: damage of quantizing each layer alone, end to end (one int8 graph and
  one scoring run per layer: fine for crnet-lite's ~30 layers, far too slow for crnet-r50's
  ~70 on a CPU).
* ``rank_layers_local``: the cheap signal that scales: each layer's own output error
  (normalised MSE of the layer's output with its input activation and weight fake-quantized
  by the calibrated ranges, against fp32) on a few episodes, each layer run alone as a
  one-node graph on the activations the fp32 graph fed it.
* ``confirm_top``: re-measure the top few of a cheap ranking end to end (the
  ``rank_layers`` damage) and put them first, in measured order.
* ``choose_exclusions``: keep the most harmful layers in fp32, one at a time, until
  |delta mIoU| <= target (or a cap on exclusions is reached).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.calibration.reader import (
    EpisodeFeeds,
    base_episodes,
    calibration_source,
    collect_feeds,
    cpu_session,
    describe_source,
)
from crnet.data.options import EpisodeSource
from crnet.runtime.bundle import GRAPHS, Bundle
from crnet.runtime.metrics import FewShotMeter
from crnet.runtime.preprocess import foreground_probability, probability_to_mask
from crnet.runtime.progress import resolve as resolve_progress
from crnet.runtime.progress import track

SENSITIVITY_SEED = 1  # calibration uses seed 0: the two episode sets are independent
RANK_EPISODES = 16  # the per-layer ranking uses a logit-error proxy on few episodes
LOCAL_RANK_EPISODES = 2  # the local (per-layer output error) ranking: episodes it runs
CONFIRM_EPISODES = 4  # episodes of the end-to-end confirmation of a local ranking's top
FULL_RANK_MAX_LAYERS = 40  # "auto": end-to-end ranking up to this many layers, else local
RANK_METHODS = ("auto", "full", "local")
GraphSource = str | Path | bytes


@dataclass(frozen=True)
class Layer:
    """One weight and the nodes that use it."""

    graph: str
    weight: str
    op_type: str
    nodes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``graph:weight``."""
        return f"{self.graph}:{self.weight}"


@dataclass(frozen=True)
class Score:
    """A candidate's query predictions against the fp32 graphs' on the same episodes."""

    miou: float
    reference_miou: float
    delta_miou: float
    probability_mae: float  # mean |foreground probability - fp32's| at feature size
    max_probability_error: float

    def to_dict(self) -> dict[str, float]:
        """JSON-ready, rounded."""
        return {key: round(float(value), 6) for key, value in asdict(self).items()}


def quantizable_layers(graphs: dict[str, Path], op_types: Sequence[str]) -> dict[str, Layer]:
    """Layers (by ``graph:weight``) of the weighted ops of ``op_types`` in each graph."""
    import onnx

    layers: dict[str, Layer] = {}
    for graph, path in graphs.items():
        model = onnx.load(str(path), load_external_data=False)
        initializers = {tensor.name for tensor in model.graph.initializer}
        for node in model.graph.node:
            if node.op_type in op_types and len(node.input) > 1 \
                    and node.input[1] in initializers:
                layer = layers.setdefault(f"{graph}:{node.input[1]}",
                                          Layer(graph, node.input[1], node.op_type))
                layer.nodes.append(node.name)
    return layers


class SensitivitySet:
    """Held-out base-class episodes with the fp32 graphs' query probabilities."""

    def __init__(self, bundle_dir: str | Path, feeds: EpisodeFeeds,
                 data: dict[str, Any] | None = None) -> None:
        bundle = Bundle.load(bundle_dir, verify=False)
        self.feeds = feeds
        self.data = data or {}
        self.fp32 = {graph: bundle.graph_path(graph, "fp32") for graph in GRAPHS}
        self._sessions = {graph: cpu_session(path) for graph, path in self.fp32.items()}
        self.reference = self._probabilities(self._sessions["backbone"],
                                             self._sessions["refine"], use_backbone=False)
        self.reference_miou = self._miou(self.reference)

    @classmethod
    def build(cls, bundle_dir: str | Path, source_of: EpisodeSource, episodes: int,
              shots: int = 1, progress: bool = True) -> SensitivitySet:
        """Preprocess ``episodes`` base-class (train split) episodes of ``source_of``'s
        dataset and fold (0 where unset), drawn with seed SENSITIVITY_SEED whatever its
        seed, so they never are the calibration episodes; ``data`` records which."""
        fold, dataset, data_root = source_of.fold_or(0), source_of.dataset, source_of.data_root
        source = calibration_source(fold, SENSITIVITY_SEED, dataset, data_root)
        feeds = collect_feeds(bundle_dir, base_episodes(fold, episodes, shots,
                                                        SENSITIVITY_SEED, source=source),
                              total=episodes, progress=progress,
                              description="sensitivity episodes")
        data = {**describe_source(source, dataset, fold, data_root),
                "seed": SENSITIVITY_SEED, "episodes": episodes, "shots": shots}
        return cls(bundle_dir, feeds, data)

    def _probabilities(self, backbone: Any, refine: Any, use_backbone: bool,
                       limit: int | None = None) -> list[np.ndarray]:
        probabilities = []
        for backbone_feed, refine_feed in zip(self.feeds.backbone[:limit],
                                              self.feeds.refine[:limit], strict=True):
            feed = refine_feed
            if use_backbone:
                (features,) = backbone.run(None, backbone_feed)
                shots = refine_feed["support_mask"].shape[0]
                feed = {"query_feat": np.ascontiguousarray(features[shots:]),
                        "support_feat": np.ascontiguousarray(features[:shots]),
                        "support_mask": refine_feed["support_mask"]}
            query_logits, _ = refine.run(None, feed)
            probabilities.append(foreground_probability(query_logits))
        return probabilities

    def _miou(self, probabilities: list[np.ndarray]) -> float:
        meter = FewShotMeter()
        count = len(probabilities)
        for probability, class_id, shape, target in zip(
                probabilities, self.feeds.class_ids[:count], self.feeds.query_shapes[:count],
                self.feeds.query_masks[:count], strict=True):
            meter.update(class_id, probability_to_mask(probability, shape), target)
        return meter.miou()

    def score(self, graphs: dict[str, GraphSource], limit: int | None = None) -> Score:
        """Run candidate graphs (a path or serialized model per graph; missing: fp32) on
        the first ``limit`` episodes (all by default)."""
        sessions = {graph: cpu_session(graphs[graph]) if graph in graphs
                    else self._sessions[graph] for graph in GRAPHS}
        probabilities = self._probabilities(sessions["backbone"], sessions["refine"],
                                            use_backbone="backbone" in graphs, limit=limit)
        reference = self.reference[:len(probabilities)]
        errors = [np.abs(p - r) for p, r in zip(probabilities, reference, strict=True)]
        miou = self._miou(probabilities)
        reference_miou = self.reference_miou if limit is None else self._miou(reference)
        return Score(miou=miou, reference_miou=reference_miou,
                     delta_miou=miou - reference_miou,
                     probability_mae=float(np.mean([e.mean() for e in errors])),
                     max_probability_error=float(max(e.max() for e in errors)))


def rank_layers(check: SensitivitySet, layers: dict[str, Layer],
                quantize_alone: Callable[[Layer], Any], episodes: int = RANK_EPISODES,
                progress: bool = True) -> list[tuple[str, float]]:
    """(layer, damage) for every layer quantized alone, most harmful first; damage is the
    mean |query probability - fp32's| on the first ``episodes`` episodes.

    ``quantize_alone(layer)`` returns the ModelProto of the layer's graph with only that
    layer quantized (the caller owns the quantizer; this module only scores)."""
    damages = []
    for name, layer in track(sorted(layers.items()), progress, "layer sensitivity"):
        model = quantize_alone(layer)
        score = check.score({layer.graph: model.SerializeToString()}, limit=episodes)
        damages.append((name, round(score.probability_mae, 8)))
    return sorted(damages, key=lambda item: -item[1])


def _fake_quantize(values: np.ndarray, amax: np.ndarray) -> np.ndarray:
    """Symmetric int8 round trip (scale amax/127, zero-point 0), broadcast over amax."""
    scale = np.maximum(amax, 1e-12) / 127.0
    return (np.clip(np.rint(values / scale), -127, 127) * scale).astype(np.float32)


def _weight_amax(weight: np.ndarray, op_type: str) -> np.ndarray:
    """Per-output-channel |max| of a weight (Conv axis 0, ConvTranspose axis 1), else one."""
    axis = {"Conv": 0, "ConvTranspose": 1}.get(op_type)
    if axis is None or weight.ndim < 2:
        return np.array(np.abs(weight).max(), np.float32)
    reduce = tuple(i for i in range(weight.ndim) if i != axis)
    return np.abs(weight).max(axis=reduce, keepdims=True)


def _one_node_model(model: Any, node: Any, initializers: dict[str, np.ndarray]) -> bytes:
    """A graph of ``node`` alone: its activation input is the graph input ``x``, its weight
    the graph input ``w``, every other input (the bias) an initializer."""
    from onnx import TensorProto, helper, numpy_helper

    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
              helper.make_tensor_value_info("w", TensorProto.FLOAT, None)]
    names = ["x", "w"]
    tensors = []
    for index, name in enumerate(node.input[2:], start=2):
        if name:
            tensors.append(numpy_helper.from_array(initializers[name], f"in{index}"))
        names.append(f"in{index}" if name else "")
    copy = helper.make_node(node.op_type, names, ["y"], domain=node.domain or None)
    copy.attribute.extend(node.attribute)
    graph = helper.make_graph([copy], "layer", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              tensors)
    opsets = [helper.make_opsetid(o.domain, o.version) for o in model.opset_import]
    one = helper.make_model(graph, opset_imports=opsets, ir_version=model.ir_version)
    return one.SerializeToString()


def rank_layers_local(graphs: dict[str, Path], ranges: dict[str, dict[str, tuple[float, float]]],
                      layers: dict[str, Layer], feeds: EpisodeFeeds,
                      episodes: int = LOCAL_RANK_EPISODES, progress: bool = True
                      ) -> list[tuple[str, float]]:
    """(layer, error) for every layer, most harmful first, from one fp32 pass per episode.

    error = sum ||y_int8 - y||^2 / sum ||y||^2 over the layer's nodes and the first
    ``episodes`` episodes, where y is the layer's fp32 output on the activation the fp32
    graph fed it and y_int8 the same node with that activation fake-quantized by its
    calibrated range and the weight per-channel (symmetric int8, TensorRT's rules).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    totals = {name: [0.0, 0.0] for name in layers}
    by_graph: dict[str, list[Layer]] = {}
    for layer in layers.values():
        by_graph.setdefault(layer.graph, []).append(layer)
    steps = sum(len(v) for v in by_graph.values()) * min(episodes, len(feeds))
    bar = resolve_progress(progress).bar(steps, "layer sensitivity (local)")
    for graph, graph_layers in by_graph.items():
        model = onnx.load(str(graphs[graph]))
        initializers = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        nodes = {node.name: node for node in model.graph.node}
        graph_inputs = {i.name for i in model.graph.input}
        wanted = sorted({nodes[n].input[0] for layer in graph_layers for n in layer.nodes}
                        - graph_inputs - {o.name for o in model.graph.output})
        for name in wanted:
            model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                                    None))
        session = cpu_session(model.SerializeToString())
        output_names = [o.name for o in session.get_outputs()]
        single: dict[str, Any] = {}
        graph_feeds = getattr(feeds, graph)[:episodes]
        for feed in graph_feeds:
            values = dict(zip(output_names, session.run(None, feed), strict=True))
            values.update(feed)
            for layer in graph_layers:
                weight = initializers[layer.weight]
                quantized_weight = _fake_quantize(weight, _weight_amax(weight, layer.op_type))
                for node_name in layer.nodes:
                    node = nodes[node_name]
                    activation = values[node.input[0]]
                    low, high = ranges.get(graph, {}).get(
                        node.input[0], (float(activation.min()), float(activation.max())))
                    amax = np.array(max(abs(low), abs(high)), np.float32)
                    if node_name not in single:
                        single[node_name] = cpu_session(
                            _one_node_model(model, node, initializers))
                    run = single[node_name]
                    (reference,) = run.run(None, {"x": activation, "w": weight})
                    (candidate,) = run.run(None, {"x": _fake_quantize(activation, amax),
                                                  "w": quantized_weight})
                    difference = candidate.astype(np.float64) - reference
                    totals[layer.name][0] += float(np.sum(difference * difference))
                    totals[layer.name][1] += float(np.sum(np.square(reference,
                                                                    dtype=np.float64)))
                bar.update(1)
        del session, single
    bar.close()
    errors = [(name, round(error / max(power, 1e-30), 10))
              for name, (error, power) in totals.items()]
    return sorted(errors, key=lambda item: (-item[1], item[0]))


def confirm_top(check: SensitivitySet, layers: dict[str, Layer],
                quantize_alone: Callable[[Layer], Any], ranking: Sequence[tuple[str, float]],
                count: int, episodes: int = CONFIRM_EPISODES, progress: bool = True
                ) -> tuple[list[tuple[str, float]], list[dict[str, Any]]]:
    """Measure the first ``count`` layers of a (cheap) ranking end to end, quantized alone
    (mean |query probability - fp32's| and delta mIoU on the first ``episodes`` episodes),
    and put them first in measured order; the rest keep their order. Returns the new
    ranking and one record per confirmed layer."""
    top = [name for name, _ in ranking[:count]]
    confirmed = []
    for name in track(top, progress, "confirm top layers"):
        layer = layers[name]
        score = check.score({layer.graph: quantize_alone(layer).SerializeToString()},
                            limit=episodes)
        confirmed.append({"layer": name, "damage": round(score.probability_mae, 8),
                          "delta_miou": round(score.delta_miou, 6)})
    confirmed.sort(key=lambda record: -record["damage"])
    cheap = dict(ranking)
    reordered = [(record["layer"], cheap[record["layer"]]) for record in confirmed]
    reordered += [(name, value) for name, value in ranking if name not in top]
    return reordered, confirmed


def choose_exclusions(check: SensitivitySet, build: Callable[[Sequence[str]], dict[str, Any]],
                      ranking: Sequence[tuple[str, float]], target_delta: float,
                      always: Sequence[str] = (), progress: bool = True,
                      max_exclusions: int | None = None,
                      last_models: dict[str, Any] | None = None
                      ) -> tuple[list[str], list[dict[str, Any]]]:
    """Exclude the most harmful layers one by one until |delta mIoU| <= ``target_delta``
    (at most ``max_exclusions`` beyond ``always``; None: no cap).

    ``build(excluded)`` returns {graph: ModelProto}. Returns the excluded layers and one
    record per tried step; ``last_models`` (a dict) receives the last step's graphs, so
    the caller need not build them again.
    """
    excluded = list(always)
    candidates = [name for name, _ in ranking if name not in excluded]
    if max_exclusions is not None:
        candidates = candidates[:max(0, max_exclusions)]
    steps: list[dict[str, Any]] = []
    bar = resolve_progress(progress).bar(len(candidates) + 1, "fp32 fallback")
    while True:
        models = build(excluded)
        score = check.score({g: m.SerializeToString() for g, m in models.items()})
        steps.append({"excluded": list(excluded), **score.to_dict()})
        bar.update(1)
        if abs(score.delta_miou) <= target_delta or not candidates:
            if last_models is not None:
                last_models.update(models)
            break
        excluded.append(candidates.pop(0))
    bar.close()
    return excluded, steps
