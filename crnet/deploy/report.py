"""The report of `crnet deploy`: report.md and the overlay pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crnet.data.pictures import (
    PREDICTION_OUTLINE,
    SUPPORT_HATCH,
    TRUTH_OUTLINE,
    grid,
    hatch,
    outline,
    save_png,
    with_legend,
)

PICTURE_TILE = 180
STAGES = ("preprocess", "inference", "postprocess")
LEGEND: tuple[tuple[str, str, tuple[int, int, int]], ...] = (
    ("support mask (blue hatching)", "hatch", SUPPORT_HATCH),
    ("ground truth (green outline)", "outline", TRUTH_OUTLINE),
    ("prediction (magenta outline)", "outline", PREDICTION_OUTLINE),
)
"""Each picture's legend: (label, style, colour); the styles are data.pictures'."""


def _tile(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An image (bilinear) and its mask (nearest) resized to ``size`` x ``size``, so that
    outlines are drawn at the size they are shown."""
    from PIL import Image

    picture = np.asarray(Image.fromarray(image).resize((size, size),
                                                       Image.Resampling.BILINEAR))
    labels = np.asarray(Image.fromarray(np.asarray(mask, np.uint8)).resize(
        (size, size), Image.Resampling.NEAREST))
    return picture, labels


def episode_picture(episode: Any, predictions: dict[str, np.ndarray], columns: list[str],
                    tile: int = PICTURE_TILE) -> np.ndarray:
    """One episode: its support (hatched mask), the query's ground truth (outline), the
    PyTorch reference and each of ``columns``' predictions (outlines), and the legend."""
    def drawn(image: np.ndarray, mask: np.ndarray, style: Any, color: Any) -> np.ndarray:
        return np.asarray(style(*_tile(image, mask, tile), color))

    query = episode.query_image
    tiles = [drawn(episode.support_images[0], episode.support_masks[0], hatch, SUPPORT_HATCH),
             drawn(query, episode.query_mask, outline, TRUTH_OUTLINE),
             *[drawn(query, predictions[name], outline, PREDICTION_OUTLINE)
               for name in ("reference", *columns)]]
    titles = ["support", "ground truth", "pytorch fp32", *columns]
    return np.asarray(with_legend(grid([tiles], titles=titles, tile=tile), LEGEND))


def save_pictures(out_dir: Path, rows: list[dict[str, Any]], precisions: list[str]
                  ) -> list[str]:
    """One picture per episode (episode_picture) under ``out_dir``/pictures; their names."""
    names = []
    for index, row in enumerate(rows):
        name = f"pictures/episode-{index:02d}.png"
        save_png(out_dir / name, episode_picture(row["episode"], row["predictions"],
                                                 precisions))
        names.append(name)
    return names


def stage_means(bench: dict[str, Any]) -> dict[str, float] | None:
    """The mean ms of each segment() stage and their sum, the mean of one whole call in the
    bench's stage loop (means add up; p50s do not); None without stage timings."""
    stages = bench.get("stages_ms") or {}
    if not all(name in stages and "mean" in stages[name] for name in STAGES):
        return None
    means = {name: float(stages[name]["mean"]) for name in STAGES}
    return {**means, "total": sum(means.values())}


def rounded_parts(parts: list[float], unit: float = 0.01) -> tuple[list[float], float]:
    """``parts`` and their sum in multiples of ``unit``, rounded so that the shown parts add
    up to the shown sum (largest remainders take the leftover units); each shown part is
    within one unit of its value."""
    import math

    total_units = round(sum(parts) / unit)
    floors = [math.floor(part / unit) for part in parts]
    order = sorted(range(len(parts)), key=lambda i: floors[i] - parts[i] / unit)
    for index in order[:max(0, total_units - sum(floors))]:
        floors[index] += 1
    return [units * unit for units in floors], total_units * unit


def _stage_split(bench: dict[str, Any]) -> str:
    """"preprocess + inference + postprocess = total" in mean ms, or "-"."""
    means = stage_means(bench)
    if means is None:
        return "-"
    shown, total = rounded_parts([means[name] for name in STAGES])
    return " + ".join(f"{value:.2f}" for value in shown) + f" = {total:.2f}"


def speed_verdict(bench: dict[str, Any]) -> tuple[bool, str] | None:
    """(met, sentence) for the fp32 bench's speed-up over the PyTorch forward against its
    target; None where the bench did not compare with torch."""
    if "speedup_vs_torch" not in bench:
        return None
    ratio, target = float(bench["speedup_vs_torch"]), bench.get("speedup_target")
    met = target is None or ratio >= float(target)
    mark = "met" if met else "**MISSED**"
    return met, (f"PyTorch full forward on (support, query): "
                 f"{bench['torch_forward_ms']['p50']:.2f} ms p50; the fp32 Segmenter with a "
                 f"cached support is **{ratio:.2f}x** faster per query (target {target}x) "
                 f"{mark}.")


def _finetune_lines(records: list[dict[str, Any]] | None) -> list[str]:
    """The k-shot finetuning table: fusion and finetune mIoU per variant, gated against
    the finetuned PyTorch reference (none when deploy did not score it)."""
    if not records:
        return []
    settings = records[1]["finetune"]
    lines = ["", f"K-shot finetuning ({records[0]['episodes']} 5-shot episodes; "
                 f"{settings['steps']} {settings['optimizer']} steps, lr {settings['lr']:g}, "
                 f"{settings['seconds_per_episode']:.1f} s per adaptation; gate against the "
                 "finetuned PyTorch reference):", "",
             "| variant | backend | fusion mIoU | finetune mIoU | gain | delta mIoU | gate | "
             "result |", "|---|---|---|---|---|---|---|---|"]
    for fused, tuned in zip(records[::2], records[1::2], strict=True):
        verdict = {True: "pass", False: "**FAIL**", None: "-"}[tuned["passed"]]
        lines.append(f"| {tuned['precision']} | {tuned['backend']} | {fused['miou']:.2f} | "
                     f"{tuned['miou']:.2f} | {tuned['gain_miou']:+.2f} | "
                     f"{tuned['delta_miou']:+.2f} | {tuned['max_abs_delta_miou']} | "
                     f"{verdict} |")
    return lines


def render_report(report: dict[str, Any]) -> str:
    """report.md: what was built, how accurate and how fast each variant is."""
    lines = [
        "# crnet deploy report", "",
        f"Checkpoint sha256 `{report['checkpoint_sha256']}`; bundle `{report['bundle']}`; "
        f"target **{report['build']['target']}**; machine {report['machine']}.", "",
        f"## Accuracy ({report['settings'].get('dataset', 'synthetic-5i')} fold "
        f"{report['settings']['fold']} test episodes, "
        f"{report['settings']['shots']}-shot, {report['settings']['episodes']} episodes, "
        f"seed {report['settings']['seed']}; reference: PyTorch fp32)", "",
        "| variant | backend | mIoU | FB-IoU | delta mIoU | gate | result |",
        "|---|---|---|---|---|---|---|",
    ]
    reference = report["accuracy"][0]
    lines.append(f"| pytorch fp32 (reference) | torch | {reference['reference_miou']:.2f} | "
                 f"{reference['reference_fbiou']:.2f} | - | - | - |")
    for record in report["accuracy"]:
        verdict = {True: "pass", False: "**FAIL**", None: "-"}[record["passed"]]
        lines.append(
            f"| {record['precision']} | {record['backend']} | {record['miou']:.2f} | "
            f"{record['fbiou']:.2f} | {record['delta_miou']:+.2f} | "
            f"{record['max_abs_delta_miou']} | {verdict} |"
        )
    lines += _finetune_lines(report.get("finetune"))
    calibration = report.get("calibration", {})
    if calibration:
        lines += ["", "Data: gated on the test split (novel classes); reduced precision "
                      "calibrated and checked on the train split (base classes) only:", ""]
        names = {"int8_calibration": "int8 calibration", "int8_sensitivity":
                 "int8 sensitivity", "fp16_check": "fp16 check"}
        for key, record in calibration.items():
            lines.append(f"* {names.get(key, key)}: {record.get('episodes', '?')} episodes of "
                         f"{record.get('data', record.get('dataset'))}")
    lines += ["", "## Speed (runtime.Segmenter, cached 1-shot support)", "",
              "| variant | p50 ms | p90 ms | p99 ms | queries/s | support encode ms | "
              "mean ms: preprocess + inference + postprocess = total |",
              "|---|---|---|---|---|---|---|"]
    for precision, bench in report["bench"].items():
        latency = bench.get("latency_ms", {})
        lines.append(
            f"| {precision} | {latency.get('p50', float('nan')):.2f} | "
            f"{latency.get('p90', float('nan')):.2f} | {latency.get('p99', float('nan')):.2f} | "
            f"{bench.get('throughput_qps', float('nan')):.1f} | "
            f"{bench.get('support_encode_ms', {}).get('p50', float('nan')):.2f} | "
            f"{_stage_split(bench)} |"
        )
    lines += ["", "The p50/p90/p99 columns time whole segment() calls. The stage columns are "
                  "means over a separate loop of the same calls, split at the Segmenter's "
                  "steps: means add up to that loop's mean call; per-stage p50s would not "
                  "add up to a p50."]
    speed = speed_verdict(report["bench"].get("fp32", {}))
    if speed is not None:
        lines += ["", speed[1]]
    lines += ["", "## Pictures", "",
              "Per episode: the support with its mask hatched in blue, the query's ground "
              "truth outlined in green, then each model's prediction outlined in magenta "
              "(each outline between a black and a white ring, visible on any background); "
              "the legend under each picture says the same.", ""]
    lines += [f"![episode {i}]({name})" for i, name in enumerate(report["pictures"])]
    lines += ["", "## Stages", "",
              "| stage | seconds | CPU seconds | peak resident MB (so far) | load (1 min) | "
              "reused |", "|---|---|---|---|---|---|"]
    for stage, info in report["stages"].items():
        lines.append(f"| {stage} | {info['seconds']:.1f} | {info.get('cpu_seconds', '-')} | "
                     f"{info.get('peak_rss_mb', '-')} | {info.get('load_1min', '-')} | "
                     f"{info.get('reused', '')} |")
    lines += ["", f"Total: {report['total_seconds']:.0f} s. Reproduce: `{report['command']}`", ""]
    return "\n".join(lines)
