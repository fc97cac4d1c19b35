"""Accuracy of reduced-precision graphs on held-out base-class episodes, and per-layer
INT8 sensitivity.

A *layer* is one weight initializer of a Conv/Gemm/MatMul (``graph:weight``, e.g.
``refine:model.refinement.entry.weight``) with every node that uses it (the refine graph
shares weights across the query/support branches and the unrolled refinement steps).

* ``SensitivitySet``: preprocessed base-class episodes (seed ``SENSITIVITY_SEED``, never
  the calibration episodes, never the novel test classes) with the fp32 graphs' outputs;
  ``score`` runs candidate graphs on them and compares with fp32: mean |query foreground
  probability difference| (the cheap logit-error proxy) and delta mIoU.
* ``rank_layers``: damage of quantizing each layer alone.
* ``choose_exclusions``: keep the most harmful layers in fp32, one at a time, until
  |delta mIoU| <= target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.reader import EpisodeFeeds, base_episodes, collect_feeds, cpu_session
from runtime.bundle import GRAPHS, Bundle
from runtime.metrics import FewShotMeter
from runtime.preprocess import foreground_probability, probability_to_mask

SENSITIVITY_SEED = 1  # calibration uses seed 0: the two episode sets are independent
RANK_EPISODES = 16  # the per-layer ranking uses a logit-error proxy on few episodes
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

    def __init__(self, bundle_dir: str | Path, feeds: EpisodeFeeds) -> None:
        bundle = Bundle.load(bundle_dir, verify=False)
        self.feeds = feeds
        self.fp32 = {graph: bundle.graph_path(graph, "fp32") for graph in GRAPHS}
        self._sessions = {graph: cpu_session(path) for graph, path in self.fp32.items()}
        self.reference = self._probabilities(self._sessions["backbone"],
                                             self._sessions["refine"], use_backbone=False)
        self.reference_miou = self._miou(self.reference)

    @classmethod
    def build(cls, bundle_dir: str | Path, fold: int, episodes: int, shots: int = 1,
              progress: bool = True) -> SensitivitySet:
        """Preprocess ``episodes`` base-class episodes of ``fold`` (seed SENSITIVITY_SEED)."""
        feeds = collect_feeds(bundle_dir, base_episodes(fold, episodes, shots,
                                                        SENSITIVITY_SEED),
                              total=episodes, progress=progress,
                              description="sensitivity episodes")
        return cls(bundle_dir, feeds)

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
    from tqdm import tqdm

    damages = []
    for name, layer in tqdm(sorted(layers.items()), desc="layer sensitivity",
                            disable=not progress, leave=False):
        model = quantize_alone(layer)
        score = check.score({layer.graph: model.SerializeToString()}, limit=episodes)
        damages.append((name, round(score.probability_mae, 8)))
    return sorted(damages, key=lambda item: -item[1])


def choose_exclusions(check: SensitivitySet, build: Callable[[Sequence[str]], dict[str, Any]],
                      ranking: Sequence[tuple[str, float]], target_delta: float,
                      always: Sequence[str] = (), progress: bool = True
                      ) -> tuple[list[str], list[dict[str, Any]]]:
    """Exclude the most harmful layers one by one until |delta mIoU| <= ``target_delta``.

    ``build(excluded)`` returns {graph: ModelProto}. Returns the excluded layers and one
    record per tried step.
    """
    from tqdm import tqdm

    excluded = list(always)
    candidates = [name for name, _ in ranking if name not in excluded]
    steps: list[dict[str, Any]] = []
    bar = tqdm(total=len(candidates) + 1, desc="fp32 fallback", disable=not progress,
               leave=False)
    while True:
        models = build(excluded)
        score = check.score({g: m.SerializeToString() for g, m in models.items()})
        steps.append({"excluded": list(excluded), **score.to_dict()})
        bar.update(1)
        if abs(score.delta_miou) <= target_delta or not candidates:
            break
        excluded.append(candidates.pop(0))
    bar.close()
    return excluded, steps
