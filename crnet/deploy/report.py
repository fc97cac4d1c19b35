"""The report of `crnet deploy`: report.md and the overlay pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crnet.data.pictures import (
    PREDICTION_COLOR,
    SUPPORT_COLOR,
    TRUTH_COLOR,
    grid,
    overlay,
    save_png,
)


def save_pictures(out_dir: Path, rows: list[dict[str, Any]], precisions: list[str]
                  ) -> list[str]:
    """One overlay grid per episode: support, truth, PyTorch, each variant."""
    names = []
    for index, row in enumerate(rows):
        episode, predictions = row["episode"], row["predictions"]
        tiles = [
            overlay(episode.support_images[0], episode.support_masks[0], SUPPORT_COLOR, 0.35),
            overlay(episode.query_image, episode.query_mask, TRUTH_COLOR),
            overlay(episode.query_image, predictions["reference"].astype(np.uint8),
                    PREDICTION_COLOR),
            *[overlay(episode.query_image, predictions[p].astype(np.uint8), PREDICTION_COLOR)
              for p in precisions],
        ]
        titles = ["support", "ground truth", "pytorch fp32", *precisions]
        name = f"pictures/episode-{index:02d}.png"
        save_png(out_dir / name, grid([tiles], titles=titles, tile=180))
        names.append(name)
    return names


def _stage_split(bench: dict[str, Any]) -> str:
    """The bench's per-stage p50s as "preprocess / inference / postprocess" in ms, or "-"."""
    stages = bench.get("stages_ms")
    if not stages:
        return "-"
    return " / ".join(f"{stages[name]['p50']:.2f}" for name in
                      ("preprocess", "inference", "postprocess") if name in stages)


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
              "p50 ms: preprocess / inference / postprocess |",
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
    fp32_bench = report["bench"].get("fp32", {})
    if "speedup_vs_torch" in fp32_bench:
        lines += ["", f"PyTorch full forward on (support, query): "
                      f"{fp32_bench['torch_forward_ms']['p50']:.2f} ms p50; the fp32 "
                      f"Segmenter with a cached support is "
                      f"**{fp32_bench['speedup_vs_torch']:.2f}x** faster per query "
                      f"(target {fp32_bench.get('speedup_target')}x)."]
    lines += ["", "## Pictures", "",
              "Support (mask in yellow), ground truth (green), then each model's "
              "prediction (red).", ""]
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
