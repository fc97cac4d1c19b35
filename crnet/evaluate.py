"""`crnet eval`: score deployed variants against the PyTorch fp32 model, with the gates.

The loop and the metric are data.evaluation's (the same path `crnet deploy`, training and
the model card use): one pass over the episodes runs the reference and every variant.
mIoU is the mean over the fold's classes (a class without an episode counts 0, as in HSNet
and PFENet); ``--sampler`` picks how PASCAL-5i queries are drawn (data/pascal.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crnet.data.options import EpisodeSource
from crnet.runtime.backends.base import REFERENCE_BACKEND, backend_class, backend_names
from crnet.runtime.errors import UsageError
from crnet.runtime.layout import PRECISIONS

GATES_FILE = Path(__file__).resolve().parent / "gates.json"
# --backend choices: auto (the runtime's choice) or any registered backend
BACKENDS = ("auto", *backend_names())


@dataclass(frozen=True)
class EvalOptions:
    """What `crnet eval` scores: which variants, against which episodes."""

    bundle: Path | None = None
    """Bundle directory; None: the torch backend on ``checkpoint``."""
    checkpoint: Path | None = None
    """Checkpoint of the torch backend without a bundle (None: the bundled one)."""
    backend: str = "torch"
    precision: str = "fp32"
    """fp32, fp16, int8, a comma list of them, or all (the bundle's variants)."""
    data: EpisodeSource = field(default_factory=EpisodeSource)
    """The test episodes scored: dataset, its directory, fold (None: 0), seed, sampler."""
    shots: int = 1
    episodes: int = 1000
    inference_precision: str | None = None
    """openvino only: the inference precision hint (f32 or bf16)."""
    progress: bool = True


def backend_option_problem(backend: str, inference_precision: str | None,
                           has_bundle: bool) -> str | None:
    """What is wrong with ``backend`` and its options for `crnet eval` (None: nothing),
    asked of the registry: an inference precision hint the backend does not take, or a
    backend other than the reference (or auto) without a bundle."""
    takes_hint = backend != "auto" and bool(backend_class(backend).inference_precision_hints)
    if inference_precision is not None and not takes_hint:
        takers = [name for name in backend_names()
                  if backend_class(name).inference_precision_hints]
        return (f"--inference-precision applies to --backend {' or '.join(takers)} only")
    if not has_bundle and backend not in ("auto", REFERENCE_BACKEND):
        return f"--backend {backend} needs --bundle DIR (a bundle from crnet export)"
    return None


def load_gates(path: Path = GATES_FILE) -> dict[str, float]:
    """Allowed |delta mIoU| per precision, from the one tolerance file."""
    gates = json.loads(path.read_text())["max_abs_delta_miou"]
    return {str(key): float(value) for key, value in gates.items()}


def parse_precisions(text: str, available: list[str] | None = None) -> list[str]:
    """``fp32``, ``fp16,int8`` or ``all`` (the bundle's variants) -> a checked list."""
    if text == "all":
        return list(available if available is not None else PRECISIONS)
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [p for p in chosen if p not in PRECISIONS]
    if not chosen or unknown:
        raise UsageError(
            f"--precision {text!r}: expected fp32, fp16, int8, a comma list of them, or all")
    return chosen


def print_gate_hints(records: list[dict[str, Any]], bundle_dir: str | Path,
                     log: Any = print) -> list[str]:
    """For each fp16/int8 record that missed its gate, print the Polygraphy commands that
    localise the layer (export/polygraphy_debug.py); returns the precisions hinted."""
    from crnet.engines.polygraphy_debug import gate_failure_hint

    hinted = []
    for record in records:
        if record.get("passed") is False and record.get("precision") in ("fp16", "int8"):
            log(gate_failure_hint(bundle_dir, record["precision"]))
            hinted.append(record["precision"])
    return hinted


def evaluate_variants(options: EvalOptions, source: Any = None) -> list[dict[str, Any]]:
    """Score the reference and each requested precision in one pass; one record each.

    ``source`` gives the episodes; None: the test episodes of ``options.data``."""
    from crnet.data.evaluation import evaluate_many, gate_record, segmenter_predictor
    from crnet.runtime import Segmenter

    gates = load_gates()
    data = options.data
    source = data.open("test") if source is None else source
    if options.bundle is None:
        precisions = ["fp32"]
        reference_segmenter = Segmenter.from_checkpoint(options.checkpoint)
    else:
        from crnet.runtime.bundle import Bundle

        bundle = Bundle.load(options.bundle)
        precisions = parse_precisions(options.precision, bundle.precisions)
        reference_segmenter = Segmenter(options.bundle, backend=REFERENCE_BACKEND,
                                        precision="fp32")
    predictors = {"reference": segmenter_predictor(reference_segmenter)}
    segmenters = [reference_segmenter]
    backends = {}
    for precision in precisions:
        if options.bundle is None or (options.backend == REFERENCE_BACKEND
                                      and precision == "fp32"):
            continue
        hint = ({"inference_precision": options.inference_precision}
                if options.inference_precision else {})
        segmenter = Segmenter(options.bundle, backend=options.backend, precision=precision,
                              **hint)
        segmenters.append(segmenter)
        backend = getattr(segmenter, "backend_name", options.backend)
        if options.inference_precision:
            backend = f"{backend}-{options.inference_precision}"
        backends[precision] = backend
        predictors[precision] = segmenter_predictor(segmenter)
    results = evaluate_many(predictors, source.episodes(options.episodes, shots=options.shots),
                            total=options.episodes, progress=options.progress,
                            description="eval " + ", ".join(predictors),
                            classes=getattr(source, "classes", None))
    for segmenter in segmenters:
        segmenter.close()  # release sessions / compiled models now, not at GC
    reference = results["reference"]
    # a precision without its own predictor is the reference scored against itself: no gate
    return [gate_record(results.get(precision, reference), reference,
                        gates.get(precision) if precision in backends else None,
                        is_reference=precision not in backends,
                        backend=backends.get(precision, REFERENCE_BACKEND), precision=precision,
                        dataset=data.dataset, sampler=data.sampler, fold=data.fold_or(0),
                        shots=options.shots, seed=data.seed,
                        bundle=None if options.bundle is None else str(options.bundle))
            for precision in precisions]
