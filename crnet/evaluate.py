"""One evaluation path for every model: a predictor maps an episode to a query mask.

The PyTorch reference and every deployed backend are scored by the same loop and the
same metric code (crnet.metrics), on the same seeded episodes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration.episodes import Episode
from crnet.metrics import FewShotMeter
from runtime.files import write_json_atomic

GATES_FILE = Path(__file__).resolve().parent / "gates.json"

Predictor = Callable[[Episode], np.ndarray]


@dataclass
class EvalResult:
    """mIoU and FB-IoU in percent over a set of episodes, with per-class IoU."""

    miou: float
    fbiou: float
    per_class_iou: dict[int, float]
    episodes: int
    seconds: float
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)


def evaluate(predict: Predictor, episodes: Iterable[Episode], total: int | None = None,
             progress: bool = True, description: str = "eval",
             keep_predictions: bool = False) -> EvalResult:
    """Run ``predict`` on every episode and score the query masks."""
    from tqdm import tqdm

    meter = FewShotMeter()
    predictions: list[np.ndarray] = []
    count = 0
    start = time.perf_counter()
    for episode in tqdm(episodes, total=total, desc=description, disable=not progress,
                        leave=False):
        prediction = predict(episode)
        meter.update(episode.class_id, prediction, episode.query_mask)
        if keep_predictions:
            predictions.append(prediction)
        count += 1
    return EvalResult(
        miou=meter.miou(),
        fbiou=meter.fbiou(),
        per_class_iou=meter.per_class_iou(),
        episodes=count,
        seconds=time.perf_counter() - start,
        predictions=predictions,
    )


def segmenter_predictor(segmenter: Any) -> Predictor:
    """Predictor over a runtime.Segmenter: set the episode's supports, segment the query."""

    def predict(episode: Episode) -> np.ndarray:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        return segmenter.segment(episode.query_image)

    return predict


def load_gates(path: Path = GATES_FILE) -> dict[str, float]:
    """Allowed |delta mIoU| per precision, from the one tolerance file."""
    gates = json.loads(path.read_text())["max_abs_delta_miou"]
    return {str(key): float(value) for key, value in gates.items()}


def episode_source(dataset: str, fold: int, seed: int, data_root: Path | None) -> Any:
    """The test episodes of a dataset by name (synthetic-5i, pascal-5i, folder)."""
    if dataset == "synthetic-5i":
        from calibration.synthetic import Synthetic5i

        return Synthetic5i(fold, split="test", seed=seed)
    if data_root is None:
        raise ValueError(f"--dataset {dataset} needs --data-root DIR")
    if dataset == "pascal-5i":
        from calibration.pascal import Pascal5i

        return Pascal5i(data_root, fold, split="test", seed=seed)
    if dataset == "folder":
        from calibration.folder import FolderDataset

        return FolderDataset(data_root, seed=seed)
    raise ValueError(f"unknown dataset {dataset!r}; expected synthetic-5i, pascal-5i or folder")


def result_record(result: EvalResult, reference: EvalResult, gate: float | None,
                  **context: Any) -> dict[str, Any]:
    """The eval JSON of shared/DESIGN.md for one variant."""
    delta = result.miou - reference.miou
    record = {
        "miou": result.miou,
        "fbiou": result.fbiou,
        "reference_miou": reference.miou,
        "reference_fbiou": reference.fbiou,
        "delta_miou": delta,
        "delta_fbiou": result.fbiou - reference.fbiou,
        "max_abs_delta_miou": gate,
        "passed": None if gate is None else abs(delta) <= gate,
        "per_class_iou": {str(k): v for k, v in result.per_class_iou.items()},
        "episodes": result.episodes,
        "seconds": result.seconds,
    }
    record.update(context)
    return record


def format_table(records: list[dict[str, Any]]) -> str:
    """One table across variants: mIoU, FB-IoU, delta vs PyTorch, gate, pass."""
    lines = [
        f"{'backend':<12} {'precision':<9} {'mIoU':>7} {'FB-IoU':>7} {'ref mIoU':>8} "
        f"{'delta':>7} {'gate':>6}  result",
    ]
    for record in records:
        gate = record["max_abs_delta_miou"]
        verdict = {True: "pass", False: "FAIL", None: "-"}[record["passed"]]
        lines.append(
            f"{record['backend']:<12} {record['precision']:<9} {record['miou']:7.2f} "
            f"{record['fbiou']:7.2f} {record['reference_miou']:8.2f} "
            f"{record['delta_miou']:+7.2f} {'' if gate is None else f'{gate:.2f}':>6}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`crnet eval`: score a deployed variant against the PyTorch fp32 model."""
    parser = argparse.ArgumentParser(prog="crnet eval", description=main.__doc__)
    parser.add_argument("--bundle", type=Path, default=None,
                        help="bundle directory (default: the torch backend on the bundled "
                             "trained checkpoint)")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="checkpoint for the torch backend without a bundle")
    parser.add_argument("--backend", default="torch",
                        choices=["auto", "onnxruntime", "openvino", "tensorrt", "torch"])
    parser.add_argument("--precision", default="fp32",
                        help="fp32, fp16, int8, a comma list, or 'all' (one table)")
    parser.add_argument("--dataset", default="synthetic-5i",
                        choices=["synthetic-5i", "pascal-5i", "folder"])
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--fold", type=int, default=0, choices=range(4))
    parser.add_argument("--shots", type=int, default=1)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the result JSON here")
    parser.add_argument("--inference-precision", choices=["f32", "bf16"], default=None,
                        help="openvino only: the inference precision hint (default f32; "
                             "bf16 only on CPUs that have it)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    from runtime import Segmenter

    if args.shots < 1:
        parser.error(f"--shots must be >= 1, got {args.shots}")
    if args.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {args.episodes}")
    if args.inference_precision is not None and args.backend != "openvino":
        parser.error("--inference-precision applies to --backend openvino only")
    if args.bundle is None and args.backend not in ("torch", "auto"):
        parser.error(f"--backend {args.backend} needs --bundle DIR (a bundle from crnet export)")
    try:
        source = episode_source(args.dataset, args.fold, args.seed, args.data_root)
    except (ValueError, FileNotFoundError) as error:
        parser.error(str(error))
    try:
        records = _evaluate_variants(args, source, Segmenter)
    except (ValueError, RuntimeError, OSError) as error:  # bundle, backend and input errors
        print(f"crnet eval: {error}", file=sys.stderr)
        return 2
    print(format_table(records))
    if args.json is not None:
        payload = records[0] if len(records) == 1 else {"variants": records}
        write_json_atomic(args.json, payload)
        print(f"wrote {args.json}")
    failed = [r["precision"] for r in records if r["passed"] is False]
    return 1 if failed else 0


def _evaluate_variants(args: argparse.Namespace, source: Any, Segmenter: Any
                       ) -> list[dict[str, Any]]:
    """Score the reference and each requested precision; one record per variant."""
    gates = load_gates()
    if args.bundle is None:
        precisions = ["fp32"]
        reference_segmenter = Segmenter.from_checkpoint(args.checkpoint)
    else:
        from runtime.bundle import Bundle

        bundle = Bundle.load(args.bundle)
        precisions = (bundle.precisions if args.precision == "all"
                      else [p.strip() for p in args.precision.split(",")])
        reference_segmenter = Segmenter(args.bundle, backend="torch", precision="fp32")

    def run(segmenter: Any, label: str) -> EvalResult:
        return evaluate(segmenter_predictor(segmenter),
                        source.episodes(args.episodes, shots=args.shots),
                        total=args.episodes, progress=not args.no_progress, description=label)

    reference = run(reference_segmenter, "torch fp32 (reference)")
    records = []
    for precision in precisions:
        if args.bundle is None or (args.backend == "torch" and precision == "fp32"):
            result, backend = reference, "torch"
        else:
            options = ({"inference_precision": args.inference_precision}
                       if args.inference_precision else {})
            segmenter = Segmenter(args.bundle, backend=args.backend, precision=precision,
                                  **options)
            backend = getattr(segmenter, "backend_name", args.backend)
            if args.inference_precision:
                backend = f"{backend}-{args.inference_precision}"
            result = run(segmenter, f"{backend} {precision}")
            segmenter.close()  # release sessions / compiled models now, not at GC
        records.append(result_record(
            result, reference, gates.get(precision), backend=backend, precision=precision,
            dataset=args.dataset, fold=args.fold, shots=args.shots, seed=args.seed,
            bundle=None if args.bundle is None else str(args.bundle),
        ))
    return records
