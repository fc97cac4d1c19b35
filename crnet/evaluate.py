"""`crnet eval`: score deployed variants against the PyTorch fp32 model, with the gates.

The loop and the metric are data.evaluation's (the same path `crnet deploy`, training and
the model card use): one pass over the episodes runs the reference and every variant.
mIoU is the mean over the fold's classes (a class without an episode counts 0, as in HSNet
and PFENet); ``--sampler`` picks how PASCAL-5i queries are drawn (data/pascal.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from crnet.runtime.errors import UsageError
from crnet.runtime.layout import PRECISIONS

GATES_FILE = Path(__file__).resolve().parent / "gates.json"
BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt", "torch")


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


def build_parser() -> argparse.ArgumentParser:
    """The options of `crnet eval`."""
    from crnet.data.evaluation import DATASETS, SAMPLERS

    parser = argparse.ArgumentParser(prog="crnet eval", description=main.__doc__)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="bundle directory (default: the torch backend on the bundled "
                             "trained checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint for the torch backend without a bundle")
    parser.add_argument("--backend", default="torch", choices=BACKENDS)
    parser.add_argument("--precision", default="fp32",
                        help="fp32, fp16, int8, a comma list, or 'all' (one table)")
    parser.add_argument("--dataset", default="synthetic-5i", choices=DATASETS)
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--sampler", default="uniform", choices=SAMPLERS,
                        help="how PASCAL-5i queries are drawn: uniform (class uniformly, the "
                             "default), hsnet (HSNet's (query, class) walk), pfenet (PFENet's "
                             "image walk); FB-IoU depends on it (see data/pascal.py)")
    parser.add_argument("--fold", type=int, default=0, choices=range(4))
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--inference-precision", choices=["f32", "bf16"], default=None,
                        help="openvino only: the inference precision hint (default f32; "
                             "bf16 only on CPUs that have it)")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    """`crnet eval`: score a deployed variant against the PyTorch fp32 model."""
    from crnet.data.evaluation import episode_source
    from crnet.runtime.files import check_writable_file, write_json_atomic

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shots < 1:
        parser.error(f"--shots must be >= 1, got {args.shots}")
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.inference_precision is not None and args.backend != "openvino":
        parser.error("--inference-precision applies to --backend openvino only")
    if args.bundle is None and args.backend not in ("torch", "auto"):
        parser.error(f"--backend {args.backend} needs --bundle DIR (a bundle from crnet export)")
    if args.json is not None:
        check_writable_file(args.json, "--json")
    source = episode_source(args.dataset, args.fold, args.seed, args.data_root,
                            sampler=args.sampler)
    records = evaluate_variants(args, source)
    from crnet.data.evaluation import format_table

    print(format_table(records))
    if records[0].get("absent_classes"):
        print(f"note: classes {records[0]['absent_classes']} had no episode and count 0 in "
              f"the mIoU (mean over the fold's classes); use more --episodes")
    if args.json is not None:
        payload = records[0] if len(records) == 1 else {"variants": records}
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    failed = [r["precision"] for r in records if r["passed"] is False]
    if args.bundle is not None:
        print_gate_hints(records, args.bundle)
    return 1 if failed else 0


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


def evaluate_variants(args: argparse.Namespace, source: Any) -> list[dict[str, Any]]:
    """Score the reference and each requested precision in one pass; one record each."""
    from crnet.data.evaluation import evaluate_many, gate_record, segmenter_predictor
    from crnet.runtime import Segmenter

    gates = load_gates()
    if args.bundle is None:
        precisions = ["fp32"]
        reference_segmenter = Segmenter.from_checkpoint(args.checkpoint)
    else:
        from crnet.runtime.bundle import Bundle

        bundle = Bundle.load(args.bundle)
        precisions = parse_precisions(args.precision, bundle.precisions)
        reference_segmenter = Segmenter(args.bundle, backend="torch", precision="fp32")
    predictors = {"reference": segmenter_predictor(reference_segmenter)}
    segmenters = [reference_segmenter]
    backends = {}
    for precision in precisions:
        if args.bundle is None or (args.backend == "torch" and precision == "fp32"):
            continue
        options = ({"inference_precision": args.inference_precision}
                   if args.inference_precision else {})
        segmenter = Segmenter(args.bundle, backend=args.backend, precision=precision,
                              **options)
        segmenters.append(segmenter)
        backend = getattr(segmenter, "backend_name", args.backend)
        if args.inference_precision:
            backend = f"{backend}-{args.inference_precision}"
        backends[precision] = backend
        predictors[precision] = segmenter_predictor(segmenter)
    results = evaluate_many(predictors, source.episodes(args.episodes, shots=args.shots),
                            total=args.episodes, progress=not args.no_progress,
                            description="eval " + ", ".join(predictors),
                            classes=getattr(source, "classes", None))
    for segmenter in segmenters:
        segmenter.close()  # release sessions / compiled models now, not at GC
    reference = results["reference"]
    return [gate_record(results.get(precision, reference), reference, gates.get(precision),
                        backend=backends.get(precision, "torch"), precision=precision,
                        dataset=args.dataset, sampler=args.sampler, fold=args.fold,
                        shots=args.shots,
                        seed=args.seed, bundle=None if args.bundle is None else str(args.bundle))
            for precision in precisions]
