"""report.md: a missed speed target is marked, the stage columns add up, pictures carry a
legend and draw predictions that stay visible."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest

from crnet.data.episodes import Episode
from crnet.data.pictures import PREDICTION_OUTLINE, SUPPORT_HATCH, TRUTH_OUTLINE
from crnet.deploy.report import (
    LEGEND,
    episode_picture,
    render_report,
    rounded_parts,
    speed_verdict,
    stage_means,
)


def timing(p50: float, mean: float) -> dict[str, float]:
    return {"p50": p50, "p90": p50, "p99": p50, "mean": mean, "min": p50, "max": p50,
            "count": 5}


def bench(speedup: float | None = None) -> dict[str, Any]:
    """A bench record whose stage p50s add up to more than the total p50 (as they may: a
    p50 of each stage comes from a different call)."""
    record: dict[str, Any] = {
        "backend": "onnxruntime", "precision": "fp32",
        "latency_ms": timing(1.0, 1.1), "support_encode_ms": timing(0.5, 0.5),
        "throughput_qps": 900.0,
        "stages_ms": {"preprocess": timing(0.304, 0.3049), "inference": timing(0.504, 0.5049),
                      "postprocess": timing(0.304, 0.3049),
                      "backbone": timing(0.2, 0.2), "refine": timing(0.3, 0.3)},
    }
    if speedup is not None:
        record.update({"speedup_vs_torch": speedup, "speedup_target": 3.0,
                       "torch_forward_ms": timing(speedup, speedup)})
    return record


def report(fp32_bench: dict[str, Any]) -> dict[str, Any]:
    record = {"precision": "fp32", "backend": "onnxruntime", "miou": 50.0, "fbiou": 60.0,
              "reference_miou": 50.0, "reference_fbiou": 60.0, "delta_miou": 0.0,
              "max_abs_delta_miou": 0.05, "passed": True}
    return {"checkpoint_sha256": "c" * 64, "bundle": "out/bundle",
            "build": {"target": "onnxruntime-cpu"}, "machine": "x86_64",
            "settings": {"dataset": "synthetic-5i", "fold": 0, "shots": 1, "episodes": 3,
                         "seed": 0},
            "accuracy": [record], "bench": {"fp32": fp32_bench}, "pictures": [],
            "stages": {}, "total_seconds": 1.0, "command": "crnet deploy"}


def test_a_missed_speed_target_is_marked() -> None:
    markdown = render_report(report(bench(speedup=1.86)))
    assert "**1.86x** faster per query (target 3.0x) **MISSED**." in markdown
    assert speed_verdict(bench(speedup=1.86))[0] is False


def test_a_met_speed_target_says_met() -> None:
    markdown = render_report(report(bench(speedup=4.2)))
    assert "(target 3.0x) met." in markdown and "MISSED" not in markdown
    assert speed_verdict(bench(speedup=4.2))[0] is True
    assert speed_verdict(bench()) is None  # not compared with torch: no verdict
    assert "faster per query" not in render_report(report(bench()))


def stage_cells(markdown: str) -> list[float]:
    row = next(line for line in markdown.splitlines() if line.startswith("| fp32 | 1.00"))
    cell = row.strip("|").split("|")[-1]
    match = re.fullmatch(r" ([\d.]+) \+ ([\d.]+) \+ ([\d.]+) = ([\d.]+) ", cell)
    assert match, cell
    return [float(value) for value in match.groups()]


def test_the_stage_columns_add_up_to_their_total() -> None:
    markdown = render_report(report(bench()))
    assert "mean ms: preprocess + inference + postprocess = total" in markdown
    *parts, total = stage_cells(markdown)
    assert sum(parts) == pytest.approx(total, abs=1e-9)
    means = stage_means(bench())
    assert means is not None and total == pytest.approx(means["total"], abs=0.005)
    assert "per-stage p50s would not add up" in markdown


def test_rounded_parts_add_up_and_stay_close() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        parts = list(rng.random(3) * rng.choice([0.1, 1.0, 50.0]))
        shown, total = rounded_parts(parts)
        assert sum(shown) == pytest.approx(total, abs=1e-9)
        assert abs(total - sum(parts)) <= 0.005 + 1e-9
        assert all(abs(a - b) < 0.01 + 1e-9 for a, b in zip(shown, parts, strict=True))


def episode_on(color: tuple[int, int, int]) -> Episode:
    image = np.full((60, 80, 3), color, np.uint8)
    mask = np.zeros((60, 80), np.uint8)
    mask[15:45, 20:60] = 1
    return Episode(class_id=1, support_images=(image,), support_masks=(mask,),
                   query_image=image, query_mask=mask)


@pytest.mark.parametrize("color", [(255, 0, 0), (255, 255, 0)])
def test_episode_pictures_show_the_prediction_and_a_legend(color: tuple[int, int, int]
                                                           ) -> None:
    episode = episode_on(color)
    prediction = episode.query_mask.astype(bool)
    tile = 100
    picture = episode_picture(episode, {"reference": prediction, "fp16": prediction},
                              ["fp16"], tile=tile)
    header, gap = 22, 4
    top = header + gap
    columns = [picture[top:top + tile, gap + i * (tile + gap):gap + i * (tile + gap) + tile]
               for i in range(4)]
    for index, drawn in enumerate(columns):
        distance = np.linalg.norm(drawn.astype(float) - color, axis=2)
        assert (distance >= 150).sum() > 4 * 30, f"column {index} invisible on {color}"
    assert (columns[0].reshape(-1, 3) == SUPPORT_HATCH).all(axis=1).any()
    assert (columns[1].reshape(-1, 3) == TRUTH_OUTLINE).all(axis=1).any()
    assert (columns[3].reshape(-1, 3) == PREDICTION_OUTLINE).all(axis=1).any()
    legend = picture[top + tile + gap:]
    assert legend.shape[0] > 10
    for _, _, swatch_color in LEGEND:
        assert (legend.reshape(-1, 3) == swatch_color).all(axis=1).any()
    assert [label.split(" (")[0] for label, _, _ in LEGEND] == [
        "support mask", "ground truth", "prediction"]
