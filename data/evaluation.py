"""One evaluation path for every model: a predictor maps an episode to a query mask.

The PyTorch reference and every deployed backend are scored by the same loop
(``evaluate_many``: one pass over the episodes, every predictor on each) and the same
metric code (runtime.metrics), on the same seeded episodes. `crnet eval`, `crnet deploy`,
training's periodic evaluation and the model card all call it; ``gate_record`` turns a
result into the eval JSON of `crnet eval --json`.

The fold mean: pass the source's classes (``classes=source.classes``) and mIoU is the
mean over the fold's classes, a class without an episode counting 0 (HSNet, PFENet);
``absent_classes`` in the result lists them. Which PASCAL-5i episodes are drawn is
``episode_source(..., sampler=)`` (see data.pascal and docs/pascal-samplers.md: uniform by
default; hsnet and pfenet give the (query, class, supports) sequences of those evaluators'
test loops, on which FB-IoU depends).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.data.episodes import DatasetError, Episode
from crnet.runtime.metrics import FewShotMeter
from crnet.runtime.progress import Progress, track

DATASETS = ("synthetic-5i", "pascal-5i", "folder")
SAMPLERS = ("uniform", "hsnet", "pfenet")
SAMPLER_PROTOCOLS: dict[str, dict[str, int]] = {
    "hsnet": {"episodes": 1000, "seed": 0},
    "pfenet": {"episodes": 5001, "seed": 321},
}
"""The episode count and seed of each evaluator's own test run (PFENet's test_num = 5000
runs 5001 episodes)."""
SAMPLER_HELP = (
    "how PASCAL-5i episodes are drawn: uniform (the default: a class uniformly, then a "
    "query and supports of it; no paper's protocol); hsnet (HSNet's test.py: the same "
    "(query, class, supports) sequence, repeated supports included, on HSNet's published "
    "fold lists when the data root is the standard VOC2012 val, else on lists made by the "
    "2048-pixel rule; HSNet runs --episodes 1000 --seed 0); pfenet (PFENet's test.py with "
    "workers=0: the same sequence, up to 20 passes; PFENet runs --episodes 5001 --seed 321, "
    "and with DataLoader workers its draws differ). docs/pascal-samplers.md says what each "
    "reproduces"
)
"""The --sampler help: it claims exactness only where tests/data/test_reference_samplers.py
shows it."""

Predictor = Callable[[Episode], np.ndarray]
EpisodeHook = Callable[[int, Episode, dict[str, np.ndarray]], None]


@dataclass
class EvalResult:
    """mIoU and FB-IoU in percent over a set of episodes, with per-class IoU."""

    miou: float
    fbiou: float
    per_class_iou: dict[int, float]
    episodes: int
    seconds: float
    predictions: list[np.ndarray] = field(default_factory=list, repr=False)
    absent_classes: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready figures (predictions left out)."""
        return {"miou": self.miou, "fbiou": self.fbiou,
                "per_class_iou": {str(k): v for k, v in self.per_class_iou.items()},
                "episodes": self.episodes, "seconds": self.seconds,
                "absent_classes": list(self.absent_classes)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        """Inverse of ``to_dict`` (for cached results)."""
        return cls(miou=float(data["miou"]), fbiou=float(data["fbiou"]),
                   per_class_iou={int(k): float(v) for k, v in data["per_class_iou"].items()},
                   episodes=int(data["episodes"]), seconds=float(data["seconds"]),
                   absent_classes=[int(c) for c in data.get("absent_classes", [])])


def evaluate_many(predictors: dict[str, Predictor], episodes: Iterable[Episode],
                  total: int | None = None, progress: bool | Progress = True,
                  description: str = "eval",
                  keep_predictions: bool = False, on_episode: EpisodeHook | None = None,
                  classes: Sequence[int] | None = None) -> dict[str, EvalResult]:
    """Run every predictor on each episode (one pass) and score the query masks.

    ``on_episode(index, episode, {name: mask})`` sees each episode's predictions (pictures).
    ``classes``: the fold's classes, the mIoU denominator (absent ones count 0); None
    averages over the classes seen.
    """
    meters = {name: FewShotMeter(classes) for name in predictors}
    seconds = dict.fromkeys(predictors, 0.0)
    kept: dict[str, list[np.ndarray]] = {name: [] for name in predictors}
    count = 0
    for episode in track(episodes, progress, description, total=total):
        predictions = {}
        for name, predict in predictors.items():
            started = time.perf_counter()
            predictions[name] = predict(episode)
            seconds[name] += time.perf_counter() - started
            meters[name].update(episode.class_id, predictions[name], episode.query_mask)
            if keep_predictions:
                kept[name].append(predictions[name])
        if on_episode is not None:
            on_episode(count, episode, predictions)
        count += 1
    return {name: EvalResult(miou=meter.miou(), fbiou=meter.fbiou(),
                             per_class_iou=meter.per_class_iou(), episodes=count,
                             seconds=seconds[name], predictions=kept[name],
                             absent_classes=meter.missing_classes())
            for name, meter in meters.items()}


def evaluate(predict: Predictor, episodes: Iterable[Episode], total: int | None = None,
             progress: bool | Progress = True, description: str = "eval",
             keep_predictions: bool = False,
             classes: Sequence[int] | None = None) -> EvalResult:
    """Run ``predict`` on every episode and score the query masks (evaluate_many of one)."""
    return evaluate_many({description: predict}, episodes, total=total, progress=progress,
                         description=description, keep_predictions=keep_predictions,
                         classes=classes)[description]


def segmenter_predictor(segmenter: Any) -> Predictor:
    """Predictor over a runtime.Segmenter: set the episode's supports, segment the query."""

    def predict(episode: Episode) -> np.ndarray:
        segmenter.set_support(list(episode.support_images), list(episode.support_masks))
        return segmenter.segment(episode.query_image)

    return predict


def missing_data_root(dataset: str, data_root: Path | str | None) -> str | None:
    """What is wrong when ``dataset`` needs a directory and none was given, else None."""
    if dataset != "synthetic-5i" and data_root is None:
        return f"--dataset {dataset} needs --data-root DIR"
    return None


def episode_source(dataset: str, fold: int, seed: int, data_root: Path | None,
                   split: str = "test", sampler: str = "uniform") -> Any:
    """The episodes of a dataset by name (synthetic-5i, pascal-5i, folder).

    ``split="test"``: the fold's novel classes; ``"train"``: its base classes.
    ``sampler`` (uniform, hsnet, pfenet) picks how PASCAL-5i queries are drawn; the other
    datasets cycle through their classes and take only ``uniform``.
    """
    if sampler not in SAMPLERS:
        raise DatasetError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
    if sampler != "uniform" and dataset != "pascal-5i":
        raise DatasetError(f"sampler {sampler!r} applies to pascal-5i only; {dataset} cycles "
                           "through its classes (use the uniform sampler)")
    if dataset == "synthetic-5i":
        from crnet.data.synthetic import Synthetic5i

        return Synthetic5i(fold, split=split, seed=seed)
    if dataset not in DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; expected one of {DATASETS}")
    if (problem := missing_data_root(dataset, data_root)) is not None:
        raise DatasetError(problem)
    if dataset == "pascal-5i":
        from crnet.data.pascal import Pascal5i

        return Pascal5i(data_root, fold, split=split, seed=seed, sampler=sampler)
    from crnet.data.folder import FolderDataset

    return FolderDataset(data_root, seed=seed)


def gate_record(result: EvalResult, reference: EvalResult, gate: float | None,
                **context: Any) -> dict[str, Any]:
    """The eval JSON of `crnet eval` for one variant, judged by its |delta mIoU| gate."""
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
        "absent_classes": list(result.absent_classes),
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
