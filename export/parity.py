"""Parity of exported graphs with the PyTorch model, on real few-shot episodes.

Both sides get the same preprocessed arrays (runtime.preprocess): ONNX Runtime (CPU) runs
backbone -> refine end to end, PyTorch runs ``model.encode`` -> ``model.refine``. Reported:
the largest absolute difference of every output (and the episode where it occurs), the
foreground-pixel agreement of the final masks at image size, and |delta mIoU| of the two
predictors scored by runtime.metrics on the same episodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from crnet.runtime.bundle import Bundle
from crnet.runtime.errors import CrnetError
from crnet.runtime.preprocess import mask_from_logits, preprocess_image, preprocess_mask
from crnet.runtime.progress import Progress, track

MIN_AGREEMENT = 0.999  # fraction of query pixels whose foreground decision must agree
MAX_DELTA_MIOU = 0.05  # in the units of runtime.metrics.FewShotMeter.miou() (percent)
SHOT_CYCLE = (1, 5)  # episode i uses SHOT_CYCLE[i % len]: exercises dynamic K
OUTPUTS = ("feat", "query_logits", "support_logits")


@dataclass
class OutputDiff:
    """Largest absolute difference of one output and the episode it occurred in."""

    max_abs_diff: float = 0.0
    episode: int = -1
    shots: int = 0


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch on a set of episodes, and whether it passes."""

    episodes: int
    fold: int
    seed: int
    shot_cycle: list[int]
    outputs: dict[str, OutputDiff]
    foreground_agreement: float  # fraction of query pixels with the same fg/bg decision
    foreground_iou: float  # IoU of the two predicted foregrounds (1.0 when both are empty)
    worst_episode_agreement: float
    worst_agreement_episode: int
    torch_miou: float
    onnx_miou: float
    delta_miou: float
    skipped: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """True when every criterion holds."""
        return not self.failures

    @property
    def max_abs_logit_diff(self) -> float:
        """Largest |logit| difference over query and support logits."""
        return max(self.outputs[name].max_abs_diff for name in ("query_logits",
                                                                 "support_logits"))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready report (the manifest's ``parity``)."""
        data = asdict(self)
        data.update(passed=self.passed, max_abs_logit_diff=self.max_abs_logit_diff,
                    thresholds={"min_foreground_agreement": MIN_AGREEMENT,
                                "max_delta_miou": MAX_DELTA_MIOU},
                    reference="PyTorch fp32 (CPU)", candidate="ONNX Runtime CPU, fp32 graphs",
                    data="synthetic-5i test split")
        return data

    def summary(self) -> str:
        """Human-readable lines: criteria, then where each output diverged most."""
        lines = [
            f"{self.episodes} episodes (fold {self.fold}, seed {self.seed}, shots cycle "
            f"{self.shot_cycle}, {len(self.skipped)} skipped)",
            f"foreground agreement {100 * self.foreground_agreement:.4f}% (min "
            f"{100 * MIN_AGREEMENT:.1f}%; worst episode {self.worst_agreement_episode}: "
            f"{100 * self.worst_episode_agreement:.3f}%); IoU of the two foregrounds "
            f"{100 * self.foreground_iou:.3f}%",
            f"mIoU torch {self.torch_miou:.3f} vs onnx {self.onnx_miou:.3f}: |delta| "
            f"{self.delta_miou:.4f} (max {MAX_DELTA_MIOU})",
        ]
        for name, diff in self.outputs.items():
            lines.append(f"{name}: max |diff| {diff.max_abs_diff:.3e} at episode "
                         f"{diff.episode} ({diff.shots}-shot)")
        lines += [f"FAIL: {failure}" for failure in self.failures]
        return "\n".join(lines)


class ParityInputError(CrnetError, ValueError):
    """A parity run that cannot be made (no episodes, or every episode skipped)."""


class ParityError(CrnetError, RuntimeError):
    """Exported graphs that disagree with PyTorch; carries the report."""

    def __init__(self, report: ParityReport, kept_at: Path | None = None) -> None:
        where = f"\nthe failing bundle and parity_report.json are in {kept_at}" if kept_at else ""
        super().__init__(report.summary() + where)
        self.report = report
        self.kept_at = kept_at


def _episode_arrays(episode: Any, config: Any) -> tuple[np.ndarray, np.ndarray]:
    """Images [K+1,3,H,W] (supports then query) and support masks [K,1,h,w], preprocessed."""
    images = [preprocess_image(image, config.input_size, config.mean, config.std,
                               what=f"support image {i}")
              for i, image in enumerate(episode.support_images)]
    images.append(preprocess_image(episode.query_image, config.input_size, config.mean,
                                   config.std, what="query image"))
    masks = [preprocess_mask(mask, config.input_size, config.feature_size,
                             image_shape=image.shape, what=f"support mask {i}")
             for i, (mask, image) in enumerate(zip(episode.support_masks,
                                                   episode.support_images, strict=True))]
    return np.concatenate(images), np.concatenate(masks)


@dataclass
class _Tally:
    """What the parity run accumulates over the episodes."""

    diffs: dict[str, OutputDiff] = field(
        default_factory=lambda: {name: OutputDiff() for name in OUTPUTS})
    torch_meter: Any = None
    onnx_meter: Any = None
    agree: int = 0
    total: int = 0
    both_foreground: int = 0
    either_foreground: int = 0
    worst_agreement: float = 1.0
    worst_episode: int = -1
    skipped: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        from crnet.runtime.metrics import FewShotMeter

        self.torch_meter, self.onnx_meter = FewShotMeter(), FewShotMeter()

    def add_outputs(self, index: int, shots: int, outputs: dict[str, dict[str, np.ndarray]]
                    ) -> None:
        """Keep the largest difference of each output (an infinite one where ONNX Runtime
        gave a non-finite value)."""
        for name in OUTPUTS:
            expected, actual = outputs["torch"][name], outputs["onnx"][name]
            difference = float(np.max(np.abs(expected - actual)))
            if not np.isfinite(actual).all():
                difference = float("inf")
            if difference > self.diffs[name].max_abs_diff or self.diffs[name].episode < 0:
                self.diffs[name] = OutputDiff(difference, index, shots)

    def add_masks(self, index: int, episode: Any, outputs: dict[str, dict[str, np.ndarray]]
                  ) -> None:
        """Compare the two final masks at image size and score both."""
        shape = episode.query_image.shape
        torch_mask = mask_from_logits(outputs["torch"]["query_logits"][0], shape)
        onnx_mask = mask_from_logits(outputs["onnx"]["query_logits"][0], shape)
        same = int(np.count_nonzero(torch_mask == onnx_mask))
        self.agree, self.total = self.agree + same, self.total + torch_mask.size
        self.both_foreground += int(np.count_nonzero(torch_mask & onnx_mask))
        self.either_foreground += int(np.count_nonzero(torch_mask | onnx_mask))
        if same / torch_mask.size < self.worst_agreement:
            self.worst_agreement, self.worst_episode = same / torch_mask.size, index
        self.torch_meter.update(episode.class_id, torch_mask, episode.query_mask)
        self.onnx_meter.update(episode.class_id, onnx_mask, episode.query_mask)


def check_parity(
    model: Any,
    bundle: Bundle,
    *,
    episodes: int = 64,
    fold: int = 0,
    seed: int = 0,
    shot_cycle: Sequence[int] = SHOT_CYCLE,
    progress: bool | Progress = True,
) -> ParityReport:
    """Compare a bundle's fp32 graphs with the PyTorch ``model`` on ``episodes`` synthetic-5i
    test episodes, through the runtime's backends (ONNX Runtime CPU and torch), the same
    backends `crnet eval` compares."""
    import time

    if episodes < 1:
        raise ParityInputError(f"parity needs at least one episode, got {episodes}")
    started = time.perf_counter()
    tally = _run_episodes(model, bundle, episodes, fold, seed, shot_cycle, progress)
    if tally.total == 0:
        raise ParityInputError(
            f"all {episodes} parity episodes were skipped (empty support masks)")
    torch_miou, onnx_miou = float(tally.torch_meter.miou()), float(tally.onnx_meter.miou())
    report = ParityReport(
        episodes=episodes, fold=fold, seed=seed, shot_cycle=list(shot_cycle),
        outputs=tally.diffs, foreground_agreement=tally.agree / tally.total,
        foreground_iou=(tally.both_foreground / tally.either_foreground
                        if tally.either_foreground else 1.0),
        worst_episode_agreement=tally.worst_agreement,
        worst_agreement_episode=tally.worst_episode, torch_miou=torch_miou,
        onnx_miou=onnx_miou, delta_miou=abs(torch_miou - onnx_miou), skipped=tally.skipped,
        seconds=round(time.perf_counter() - started, 2),
    )
    report.failures += _failures(report)
    return report


def _run_episodes(model: Any, bundle: Bundle, episodes: int, fold: int, seed: int,
                  shot_cycle: Sequence[int], progress: bool | Progress) -> _Tally:
    """Run both sides on each episode (skipping those whose support mask vanishes at the
    feature size) and tally the differences."""
    from crnet.data.synthetic import Synthetic5i
    from crnet.models.torch_backend import TorchBackend
    from crnet.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend

    model.eval()
    candidate = OnnxRuntimeBackend(bundle, "fp32", use_ort_build=False)
    reference = TorchBackend(None, "fp32", model=model, device="cpu")
    dataset = Synthetic5i(fold, split="test", seed=seed)
    tally = _Tally()
    with candidate, reference:
        for index in track(range(episodes), progress, "parity"):
            shots = int(shot_cycle[index % len(shot_cycle)])
            episode = dataset.episode(index, shots)
            images, masks = _episode_arrays(episode, model.config)
            if np.any(masks.reshape(len(masks), -1).sum(axis=1) <= 0):
                tally.skipped.append(index)  # an object too small to survive the resize
                continue
            outputs = {}
            for name, backend in (("torch", reference), ("onnx", candidate)):
                feat = backend.run_backbone(images)
                query_logits, support_logits = backend.run_refine(feat[-1:], feat[:-1], masks)
                outputs[name] = {"feat": feat, "query_logits": query_logits,
                                 "support_logits": support_logits}
            tally.add_outputs(index, shots, outputs)
            tally.add_masks(index, episode, outputs)
    return tally


def _failures(report: ParityReport) -> list[str]:
    """The criteria ``report`` misses: agreement, |delta mIoU|, finite outputs."""
    failures = []
    if report.foreground_agreement < MIN_AGREEMENT:
        failures.append(
            f"foreground agreement {100 * report.foreground_agreement:.3f}% < "
            f"{100 * MIN_AGREEMENT:.1f}% (worst: episode {report.worst_agreement_episode}, "
            f"{100 * report.worst_episode_agreement:.2f}%)")
    if report.delta_miou > MAX_DELTA_MIOU:
        failures.append(f"|delta mIoU| {report.delta_miou:.4f} > {MAX_DELTA_MIOU}")
    failures += [f"{name} is not finite in episode {diff.episode}"
                 for name, diff in report.outputs.items() if not np.isfinite(diff.max_abs_diff)]
    return failures
